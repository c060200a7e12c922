#!/usr/bin/env bash
# What strict logging costs, side by side in one run: two demo gateways on
# the same machine (100 000 holders each), one with the default strict log,
# one with `[log] mode = "off"`, loaded in turn at each constant open-loop
# rate with the demo's case mix, every answer checked by healthgate-loadgen
# (latency from the intended send time). For the strict gateway the fsync
# p50/p99, each record's commit wait (append to acknowledgement) and the
# mean batch size come from its own /metrics histograms
# (healthgate_log_fsync_duration_seconds, healthgate_log_commit_wait_seconds,
# healthgate_log_batch_records), as differences between a scrape before and
# after each run.
#
#   scripts/bench-durability.sh
#   RATES="500 2000 8000 12000" DURATION=4s scripts/bench-durability.sh
#
# Settings (environment): RATES="500 2000 8000" DURATION=4s SIZE=100000
# CONNECTIONS=64 REPEAT=1 (runs per rate and mode; the table shows the
# median p99 over them) KEEP=1 (keep the work folder) PROFILE=1 (after the
# table, one more run per rate and mode under `perf sched record`: where
# each gateway thread's time went, CPU and waiting for a CPU; needs perf).
# Exits 1 if any answer was wrong or any request failed.
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-"500 2000 8000"}
DURATION=${DURATION:-4s}
SIZE=${SIZE:-100000}
CONNECTIONS=${CONNECTIONS:-64}
REPEAT=${REPEAT:-1}

for tool in curl python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool is needed" >&2; exit 1; }
done

cargo build --release -p healthgate -p healthgate-loadgen
BIN=${CARGO_TARGET_DIR:-target}/release

. scripts/bench-lib.sh
bench_work durability

json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }

echo "preparing two demos of $SIZE holders in $WORK" >&2
demo_up "$WORK/strict" --fresh
STRICT_PID=$DEMO
# The same demo with logging off: made, stopped, reconfigured, resumed.
demo_make "$WORK/off" '[log]\nmode = "off"'
demo_up "$WORK/off"
OFF_PID=$DEMO
echo "strict gateway pid $STRICT_PID, off gateway pid $OFF_PID" >&2

scrape() { curl -fs "$(json "$WORK/strict/env.json" "['admin_url']")/metrics" >"$1"; }

# Quantiles and mean of a histogram between two scrapes.
hist() {
  python3 - "$1" "$2" "$3" <<'EOF'
import re, sys
before, after, name = sys.argv[1:]
def read(path):
    buckets, total, count = {}, 0.0, 0.0
    for line in open(path):
        m = re.match(name + r'_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            buckets[float('inf') if m[1] == '+Inf' else float(m[1])] = float(m[2])
        elif line.startswith(name + '_sum '):
            total = float(line.split()[1])
        elif line.startswith(name + '_count '):
            count = float(line.split()[1])
    return buckets, total, count
b0, s0, c0 = read(before)
b1, s1, c1 = read(after)
n = c1 - c0
def quantile(q):
    if n <= 0:
        return float('nan')
    lo, below = 0.0, 0.0
    for le in sorted(b1):
        cum = b1[le] - b0.get(le, 0.0)
        if cum >= q * n:
            if le == float('inf'):
                return lo
            inside = cum - below
            return lo + (le - lo) * ((q * n - below) / inside if inside > 0 else 1.0)
        lo, below = le, cum
    return lo
mean = (s1 - s0) / n if n > 0 else float('nan')
print(quantile(0.5), quantile(0.99), mean, int(n), quantile(0.999))
EOF
}

seed=0
failed=0
ROWS=()
declare -A best=([strict]=0 [off]=0)
for rate in $RATES; do
  declare -A p50 p99 p999 wrong
  fs=""
  for mode in strict off; do
    vals=()
    for r in $(seq "$REPEAT"); do
      seed=$((seed + 1))
      out=$WORK/$mode-$rate-$r.json
      [ "$mode" = strict ] && scrape "$WORK/before.prom"
      status=0
      "$BIN/healthgate-loadgen" --env "$WORK/$mode/env.json" --rate "$rate" --duration "$DURATION" \
        --connections "$CONNECTIONS" --case-seed "$seed" --json -q >"$out" 2>"$out.err" || status=$?
      if [ "$mode" = strict ]; then
        scrape "$WORK/after.prom"
        read -r f50 f99 _ _ _ < <(hist "$WORK/before.prom" "$WORK/after.prom" healthgate_log_fsync_duration_seconds)
        read -r _ _ bmean batches _ < <(hist "$WORK/before.prom" "$WORK/after.prom" healthgate_log_batch_records)
        read -r w50 w99 _ _ w999 < <(hist "$WORK/before.prom" "$WORK/after.prom" healthgate_log_commit_wait_seconds)
        fs=$(python3 -c "print(f'{$f50*1e3:.3f} / {$f99*1e3:.3f} ms | {$w50*1e3:.2f} / {$w99*1e3:.2f} / {$w999*1e3:.2f} ms | {$bmean:.2f} ({$batches} batches)')")
      fi
      errors=$(json "$out" "['errors']['total']")
      mism=$(json "$out" "['mismatches']")
      if [ "$status" -ne 0 ] || [ "$errors" != 0 ] || [ "$mism" != 0 ]; then
        echo "$mode at $rate/s: exit $status, $errors errors, $mism wrong answers (see $out.err)" >&2
        failed=1
      fi
      vals+=("$(json "$out" "['latency_us']['p50_us']") $(json "$out" "['latency_us']['p99_us']") $(json "$out" "['latency_us']['p999_us']") $mism")
    done
    # The run with the median p99.
    read -r p50[$mode] p99[$mode] p999[$mode] wrong[$mode] < <(printf '%s\n' "${vals[@]}" | sort -k2 -n | sed -n "$(((REPEAT + 1) / 2))p")
  done
  ms() { python3 -c "print(f'{$1/1000:.2f}')"; }
  ROWS+=("| $rate/s | $(ms "${p50[off]}") / $(ms "${p99[off]}") / $(ms "${p999[off]}") ms | $(ms "${p50[strict]}") / $(ms "${p99[strict]}") / $(ms "${p999[strict]}") ms | $(ms $((p99[strict] - p99[off]))) ms | $(ms $((p999[strict] - p999[off]))) ms | $fs | ${wrong[strict]} / ${wrong[off]} |")
  for mode in strict off; do
    if [ "${p99[$mode]}" -lt 5000 ]; then best[$mode]=$rate; fi
  done
  unset p50 p99 p999 wrong
done

echo
echo "strict vs [log] mode = \"off\": $SIZE holders, the demo's case mix, open loop, $DURATION a run, $CONNECTIONS connections, $(nproc) CPUs"
echo
echo "| rate | off p50 / p99 / p99.9 | strict p50 / p99 / p99.9 | strict - off p99 | strict - off p99.9 | strict fsync p50 / p99 | strict commit wait p50 / p99 / p99.9 | mean batch | wrong answers strict / off |"
echo "| ---: | --- | --- | ---: | ---: | --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
echo
echo "highest rate with p99 under 5 ms: strict ${best[strict]}/s, off ${best[off]}/s$(
  [ "${best[off]}" -gt 0 ] && python3 -c "print(f' ({${best[strict]}/${best[off]}:.2f} x off)')")"

# Where the time goes: each gateway thread's CPU time and how long it
# waited for a CPU once woken (scheduling delay), from the scheduler's own
# trace, for one more run per rate and mode.
if [ "${PROFILE:-0}" = 1 ]; then
  command -v perf >/dev/null 2>&1 || { echo "PROFILE=1 needs perf (apt-get install linux-perf)" >&2; exit 1; }
  echo
  echo "Scheduler profile (perf sched), per gateway thread: CPU ms over the run, wakes, scheduling delay p99 / max in ms"
  for rate in $RATES; do
    for mode in strict off; do
      pid=$([ "$mode" = strict ] && echo "$STRICT_PID" || echo "$OFF_PID")
      secs=$(( ${DURATION%s} + 1 ))
      perf sched record -a -o "$WORK/sched.data" -- sleep "$secs" >/dev/null 2>&1 &
      perf_pid=$!
      sleep 0.3
      "$BIN/healthgate-loadgen" --env "$WORK/$mode/env.json" --rate "$rate" --duration "$DURATION" \
        --connections "$CONNECTIONS" --json -q >"$WORK/profile.json" 2>/dev/null || true
      wait "$perf_pid" || true
      p99=$(json "$WORK/profile.json" "['latency_us']['p99_us']")
      echo
      echo "$mode at $rate/s (this run's p99 $(python3 -c "print(f'{$p99/1000:.2f}')") ms):"
      perf sched timehist -i "$WORK/sched.data" -p "$pid" 2>/dev/null | python3 -c '
import collections, re, sys
run, wakes, delays = collections.Counter(), collections.Counter(), collections.defaultdict(list)
for line in sys.stdin:
    m = re.match(r"\s*[\d.]+\s+\[\d+\]\s+(\S+?)\[\d+/\d+\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", line)
    if not m:
        continue
    name = re.sub(r"-?\d*$", "", m[1]) or m[1]
    run[name] += float(m[4]); wakes[name] += 1; delays[name].append(float(m[3]))
for name in sorted(run, key=lambda n: -run[n]):
    d = sorted(delays[name]); p99 = d[min(len(d) - 1, int(len(d) * 0.99))]
    print(f"  {name:<18} {run[name]:8.1f} ms CPU {wakes[name]:7d} wakes  delay p99 {p99:.3f} max {d[-1]:.3f}")
'
    done
  done
fi

echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
exit $failed
