#!/usr/bin/env bash
# A/B of gateway configurations, side by side in one run: what a setting
# changes under the same load.
#
#   CONFIGS='default;[log]\nbatch_max_wait_us = 500' scripts/bench-config.sh
#
# CONFIGS is a list of variants separated by `;`. Each variant is TOML
# (`\n` for a new line) appended to a demo gateway's configuration;
# `default` appends nothing. Every variant gets its own demo (SIZE holders,
# the same seed), started, stopped, configured and resumed. Then, REPEAT
# times, each variant in turn is driven by the same load-generator ramp
# with the demo's case mix and every answer checked (a new case seed each
# run, the same for every variant of a repetition). The ramp's steps are
# fine (STEP apart) so that the highest step within the SLO is read closely.
#
# Per run it prints: the highest step with p99 under SLO and no errors;
# p50 over the whole run; the gateway's CPU per answer (from /proc, over
# the load generator's whole run, its signing ahead included, during which
# the gateway idles); records per fsync and codes per verifier batch (from
# the gateway's /metrics); the p99 of every step. Then, per variant, the
# medians over the repetitions. Exits 1 if an answer was wrong.
#
# Settings (environment): RAMP=3000..9000 STEP=x1.1 STEP_SECS=1 SLO=5ms
# REPEAT=3 SIZE=100000 CONNECTIONS=64 THREADS=<CPUs> KEEP=1 (keep the work
# folder) BUILD=0 (use the release binaries already built).
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIGS=${CONFIGS:-default}
RAMP=${RAMP:-3000..9000}
STEP=${STEP:-x1.1}
STEP_SECS=${STEP_SECS:-1}
SLO=${SLO:-5ms}
REPEAT=${REPEAT:-3}
SIZE=${SIZE:-100000}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-$(nproc)}
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || { echo "REPEAT must be a positive number" >&2; exit 64; }
for tool in jq curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool is needed" >&2; exit 1; }
done
[ "${BUILD:-1}" = 0 ] || cargo build --release -p healthgate -p healthgate-loadgen
BIN=${CARGO_TARGET_DIR:-target}/release
. scripts/bench-lib.sh
bench_work config

IFS=';' read -r -a VARIANTS <<<"$CONFIGS"
[ ${#VARIANTS[@]} -gt 0 ] || { echo "CONFIGS names no variant" >&2; exit 64; }

# Each variant's demo: made, stopped, configured.
for i in "${!VARIANTS[@]}"; do
  echo "preparing variant $i: ${VARIANTS[$i]}" >&2
  config=${VARIANTS[$i]}
  [ "$config" != default ] || config=
  demo_make "$WORK/v$i" "$config"
done

# Counter or histogram sum/count from a scrape.
metric() { awk -v m="$2" '$1 == m { print $2; found = 1 } END { if (!found) print 0 }' "$1"; }

wrong=0
for r in $(seq "$REPEAT"); do
  for i in "${!VARIANTS[@]}"; do
    demo_up "$WORK/v$i"
    admin=$(jq -r .admin_url "$WORK/v$i/env.json")
    curl -s "$admin/metrics" >"$WORK/before.prom"
    t0=$(ticks "$DEMO")
    out=$WORK/v$i-$r.json
    "$BIN/healthgate-loadgen" --env "$WORK/v$i/env.json" --connections "$CONNECTIONS" --threads "$THREADS" \
      --ramp "$RAMP" --step "$STEP" --step-duration "${STEP_SECS}s" --slo-p99 "$SLO" --max-backlog 20000 \
      --case-seed "$((100 + r))" --sign-ahead 2000000 --json -q >"$out" 2>"$out.err" || true
    t1=$(ticks "$DEMO")
    curl -s "$admin/metrics" >"$WORK/after.prom"
    demo_down "$DEMO"
    [ -s "$out" ] || { echo "variant $i, run $r: no summary:" >&2; cat "$out.err" >&2; exit 1; }
    d() { awk -v a="$(metric "$WORK/before.prom" "$1")" -v b="$(metric "$WORK/after.prom" "$1")" 'BEGIN { print b - a }'; }
    jq -n --argjson s "$(cat "$out")" --arg cpu "$(awk -v a="$t0" -v b="$t1" -v t="$TCK" 'BEGIN { print (b - a) / t }')" \
      --arg recs "$(d healthgate_log_commit_wait_seconds_count)" --arg fsyncs "$(d healthgate_log_fsync_duration_seconds_count)" \
      --arg codes "$(d healthgate_verify_batch_size_sum)" --arg batches "$(d healthgate_verify_batch_size_count)" '{
        max: ($s.slo.max_rate // 0), p50: $s.latency_us.p50_us, mism: $s.mismatches,
        cpu_us: (($cpu | tonumber) * 1e6 / ([$s.answered, 1] | max)),
        per_fsync: (if ($fsyncs | tonumber) > 0 then ($recs | tonumber) / ($fsyncs | tonumber) else 0 end),
        per_batch: (if ($batches | tonumber) > 0 then ($codes | tonumber) / ($batches | tonumber) else 0 end),
        p99s: [$s.phases[] | .latency_us.p99_us / 1000] }' >"$WORK/v$i-$r.row"
    [ "$(jq -r .mism "$WORK/v$i-$r.row")" = 0 ] || wrong=1
  done
done

row() {
  jq -r --arg lbl "$1" '"\($lbl)  max within SLO \(.max | round)/s  p50 \(.p50 / 1000 * 100 | round / 100) ms  " +
    "CPU \(.cpu_us | round) µs/answer  \(.per_fsync * 100 | round / 100) records/fsync  " +
    "\(.per_batch * 100 | round / 100) codes/batch  wrong \(.mism)\n      p99 by step (ms): " +
    "\([.p99s[] | . * 10 | round / 10 | tostring] | join(" "))"' "$2"
}
echo
echo "== configurations side by side: ramp $RAMP ($STEP, ${STEP_SECS} s a step), SLO p99 < $SLO, $REPEAT runs each," \
  "$SIZE holders, $CONNECTIONS connections, $(nproc) CPUs"
for i in "${!VARIANTS[@]}"; do
  echo
  echo "variant $i: ${VARIANTS[$i]}"
  for r in $(seq "$REPEAT"); do row "  run $r:" "$WORK/v$i-$r.row"; done
done
echo
echo "medians over the runs:"
for i in "${!VARIANTS[@]}"; do
  jq -s -r --arg v "${VARIANTS[$i]}" 'def med: sort | if length % 2 == 1 then .[length / 2 | floor]
      else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    "  \($v | gsub("\\\\n"; " ")): max within SLO \(map(.max) | med | round)/s, p50 \(map(.p50) | med / 1000 * 100 | round / 100) ms, " +
    "CPU \(map(.cpu_us) | med | round) µs/answer, \(map(.per_fsync) | med * 100 | round / 100) records/fsync"' \
    "$WORK"/v"$i"-*.row
done
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
exit $wrong
