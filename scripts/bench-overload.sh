#!/usr/bin/env bash
# Overload benchmark, one run: does the gateway hold the gate when asked for
# more than it can do?
#
#   1. Finds the 1x rate: a step ramp of scans on CONNECTIONS connections;
#      the highest step whose p99 stays under SLO (or RATE1 if given).
#   2. For 1x, 2x and 4x that rate, DURATION seconds each, at once:
#        - constant open-loop scans (default case mix, every answer checked)
#          on CONNECTIONS connections;
#        - holder lookups at LOOKUP_RATE/s on 16 connections;
#        - a tracing query (the last second at one checkpoint) every
#          TRACE_EVERY seconds on the admin listener;
#        - GET /readyz on the admin listener every 0.1 s, timed.
#   3. Right after each: how long the last answers took to drain, and a
#      light probe (400 scans/s for 4 s, enough answers for its p99 to
#      mean something): recovery.
#   4. The floor: bare_http (a fixed answer, no work) on the gateway's CPUs,
#      asked the 4x rate of the same scans on as many connections: what the
#      kernel and hyper alone cost per request, against which a refusal's
#      cost is read.
# Each run gets a fresh demo gateway, so no run inherits another's state.
#
# Reports for admitted scans (answered 200) the achieved rate and
# p50/p99/p99.9 from the intended send time; refused scans by reason, and
# the gateway's refusals by class (healthgate_refused_requests_total,
# scraped before and after); lookups' and tracing's answers by status;
# the admin /readyz latency; the drain and the probe after the load; the
# gateway's CPU during each step by thread (from /proc), per request, and
# its request workers' cost per request against the floor's; the 4x
# step's CPU budget: what answering everything plus holding the 1x rate
# needs, against the gateway's CPUs and the 1x step's own load.
#
# Settings (environment): DURATION=10 CONNECTIONS=2000 SIZE=100000 SLO=5ms
# RATE1=<found by the ramp> LOOKUP_RATE=500 TRACE_EVERY=0.2 THREADS=<CPUs>
# PROFILE=1: the gateway under perf during the 4x step; where its CPU went
# (by thread and by library, then the request workers' top symbols).
# CONFIG: TOML appended to every step's demo configuration (`\n` for a new
# line), e.g. CONFIG='[log]\nmode = "off"' to see what the strict log
# costs the tail. SERVER: lines added to the demo's own [server] table
# (`\n` for a new line), e.g. SERVER='max_scan_rate = 4000'.
# KEEP=1 (keep the work folder with every JSON summary); BUILD=0 uses the
# release binaries already built instead of building them first.
# GATEWAY_CPUS / LOADGEN_CPUS (taskset lists): the CPUs each side may run
# on. By default, on a machine of two CPUs or more, the gateway gets CPU 0
# and every other process of the run the rest, so that the load generator
# asking for 4x never takes the gateway's CPU: the figures are then those
# of a one-CPU gateway. GATEWAY_CPUS=all shares every CPU (the load
# generator competes with the gateway).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-2000}
SIZE=${SIZE:-100000}
SLO=${SLO:-5ms}
RATE1=${RATE1:-}
CONFIG=${CONFIG:-}
SERVER=${SERVER:-}
SIDE_NICE=${SIDE_NICE:-10}
LOOKUP_RATE=${LOOKUP_RATE:-500}
TRACE_EVERY=${TRACE_EVERY:-0.2}
NCPU=$(nproc)
if [ "$NCPU" -ge 2 ]; then
  GATEWAY_CPUS=${GATEWAY_CPUS:-0}
  LOADGEN_CPUS=${LOADGEN_CPUS:-1-$((NCPU - 1))}
else
  GATEWAY_CPUS=${GATEWAY_CPUS:-all}
fi
[ "$GATEWAY_CPUS" = all ] && LOADGEN_CPUS=all
# The gateway's command prefix: taskset execs the gateway, so the pid the
# script keeps (and stops) is the gateway's own.
PIN=()
[ "$GATEWAY_CPUS" = all ] || PIN=(taskset -c "$GATEWAY_CPUS")
if [ "$LOADGEN_CPUS" = all ]; then
  THREADS=${THREADS:-$NCPU}
else
  THREADS=${THREADS:-$(taskset -c "$LOADGEN_CPUS" nproc)}
fi
# Every token of a run is signed before its clock starts.
SIGN_AHEAD=${SIGN_AHEAD:-2000000}

for tool in jq curl taskset; do command -v "$tool" >/dev/null || { echo "bench-overload needs $tool" >&2; exit 1; }; done
if [ "${PROFILE:-0}" = 1 ] && ! command -v perf >/dev/null; then
  echo "PROFILE=1 needs perf (Debian: linux-perf)" >&2
  exit 1
fi

[ "${BUILD:-1}" = 0 ] || cargo build --release -p healthgate -p healthgate-loadgen -p healthgate-benches \
  --bin healthgate --bin healthgate-loadgen --bin bare_http
BIN=${CARGO_TARGET_DIR:-target}/release
# This script and all it starts (load generator, probes) run on
# LOADGEN_CPUS; the gateway is moved to GATEWAY_CPUS as it starts.
[ "$LOADGEN_CPUS" = all ] || taskset -cp "$LOADGEN_CPUS" $$ >/dev/null

. scripts/bench-lib.sh
bench_work overload

# Starts a fresh demo gateway (a new population: no state left by an
# earlier run, whose refused `out`s would leave holders inside for the next
# run's anti-passback); stops the previous one by its pid.
DEMO=
start_demo() {
  [ -z "$DEMO" ] || demo_down "$DEMO"
  echo "starting a demo gateway (population $SIZE)" >&2
  if [ -n "$CONFIG$SERVER" ]; then
    demo_make "$WORK/demo" "$CONFIG" "$SERVER"
    demo_up "$WORK/demo"
  else
    demo_up "$WORK/demo" --fresh
  fi
  ENV=$WORK/demo/env.json
  ADMIN=$(jq -r .admin_url "$ENV")
  AUTHORITY=$(jq -r .api_keys.authority "$ENV")
  CHECKPOINT=$(jq -r '.checkpoints.metro[0]' "$ENV")
  echo "gateway ready: $(jq -r .public_url "$ENV")" >&2
}

# loadgen NAME ARGS...: one run, JSON summary in $WORK/NAME.json.
loadgen() {
  local name=$1
  shift
  echo "run $name: healthgate-loadgen $*" >&2
  local rc=0
  "$BIN/healthgate-loadgen" --env "$ENV" --threads "$THREADS" --json -q --max-errors 1000000000 "$@" \
    >"$WORK/$name.json" 2>"$WORK/$name.log" || rc=$?
  if [ ! -s "$WORK/$name.json" ]; then
    echo "run $name failed (exit $rc):" >&2
    cat "$WORK/$name.log" >&2
    exit 1
  fi
}

# The gateway's refusals by class and reason, as "class/reason count" lines.
refusals() {
  curl -s "$ADMIN/metrics" | awk -F'[{}", ]+' '/^healthgate_refused_requests_total\{/ {
    for (i = 2; i < NF; i += 2) { if ($i == "class=") c = $(i + 1); if ($i == "reason=") r = $(i + 1) }
    print c "/" r, $NF }' | sort
}

# Lowers the calling (sub)shell's priority to SIDE_NICE, and so that of
# everything it starts from then on.
side() { renice -n "$SIDE_NICE" -p "$BASHPID" >/dev/null 2>&1 || true; }

# Timed GETs every $3 seconds until $4 (epoch seconds): "status seconds" lines.
poll() {
  local url=$1 out=$2 every=$3 until=$4 auth=${5:-}
  while [ "$(date +%s)" -lt "$until" ]; do
    curl -s -o /dev/null -m 10 ${auth:+-H "authorization: Bearer $auth"} -w '%{http_code} %{time_total}\n' \
      "$url" >>"$out" || echo "000 10" >>"$out"
    sleep "$every"
  done
}

# p50 p99 max (ms) of the second column of a poll file.
times() {
  awk '{ print $2 * 1000 }' "$1" | sort -n | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "n/a n/a n/a"; exit }
    i50 = int(NR * 0.5); if (i50 < 1) i50 = 1; i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
    printf "%.1f %.1f %.1f\n", v[i50], v[i99], v[NR] }'
}
# "status count" pairs of a poll file, one line.
codes() { awk '{ n[$1]++ } END { for (c in n) printf "%s:%d ", c, n[c] }' "$1"; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

if [ -z "$RATE1" ]; then
  start_demo
  loadgen ramp --ramp 1000..24000 --step x1.25 --step-duration 2s --slo-p99 "$SLO" --connections "$CONNECTIONS" \
    --max-backlog 20000 --sign-ahead "$SIGN_AHEAD" --case-seed 11
  RATE1=$(jq -r '(.slo.max_rate // 1000) | floor' "$WORK/ramp.json")
  echo "1x rate (p99 under $SLO): $RATE1/s" >&2
  sleep 2
fi

for m in 1 2 4; do
  rate=$((RATE1 * m))
  start_demo
  refusals >"$WORK/refused-before-$m.txt"
  end=$(($(date +%s) + DURATION + 5))
  : >"$WORK/readyz-$m.txt"
  : >"$WORK/trace-$m.txt"
  # The loads beside the scans run at a lower priority than the scans'
  # load generator, which shares their CPUs: a scan sent late counts its
  # lateness as latency, and the curls' forks and the lookups' pacing had
  # made it late.
  (
    side
    poll "$ADMIN/readyz" "$WORK/readyz-$m.txt" 0.1 "$end"
  ) &
  PIDS+=($!)
  readyz=$!
  (
    side
    while [ "$(date +%s)" -lt "$end" ]; do
      from=$(date -u -d '-1 sec' +%Y-%m-%dT%H:%M:%SZ)
      curl -s -o /dev/null -m 10 -H "authorization: Bearer $AUTHORITY" -w '%{http_code} %{time_total}\n' \
        "$ADMIN/v1/admin/visits?checkpoint=$CHECKPOINT&from=$from" >>"$WORK/trace-$m.txt" || echo "000 10" >>"$WORK/trace-$m.txt"
      sleep "$TRACE_EVERY"
    done
  ) &
  PIDS+=($!)
  tracing=$!
  (
    side
    loadgen "lookup-$m" --target lookup --rate "$LOOKUP_RATE" --duration "$((DURATION + 4))s" --connections 16
  ) &
  PIDS+=($!)
  lookups=$!
  sleep 2
  if [ "${PROFILE:-0}" = 1 ] && [ "$m" = 4 ]; then
    # Only the gateway's running time is sampled: the load generator's
    # signing before its clock starts leaves the gateway idle.
    perf record -q -F 199 -p "$DEMO" -o "$WORK/perf-4x.data" -- sleep $((DURATION + 8)) >/dev/null 2>&1 &
    PIDS+=($!)
    perf_pid=$!
  fi
  thread_ticks "$DEMO" >"$WORK/cpu-before-$m.txt"
  log_tail "$ADMIN" >"$WORK/log-before-$m.txt"
  loadgen "scan-$m" --rate "$rate" --duration "${DURATION}s" --connections "$CONNECTIONS" \
    --sign-ahead "$SIGN_AHEAD" --max-backlog 1000000 --case-seed $((20 + m))
  thread_ticks "$DEMO" >"$WORK/cpu-after-$m.txt"
  log_tail "$ADMIN" >"$WORK/log-after-$m.txt"
  [ -n "${perf_pid:-}" ] && { wait "$perf_pid" || true; perf_pid=; }
  # Recovery: the moment the scans' run returned (its answers drained), a
  # light probe.
  loadgen "probe-$m" --rate 400 --duration 4s --connections 16 --case-seed $((30 + m))
  wait "$lookups" "$readyz" "$tracing" || true
  refusals >"$WORK/refused-after-$m.txt"
  sleep 2
done

# The floor: bare_http (a fixed answer, no work at all) on the gateway's
# CPUs, asked the 4x rate on as many connections. What it spends per
# request is the kernel's and hyper's share alone: no refusal can cost less.
kill "$DEMO" 2>/dev/null || true
wait "$DEMO" 2>/dev/null || true
DEMO=
echo "starting bare_http on CPUs $GATEWAY_CPUS: the floor at the 4x rate" >&2
# Its own open-file limit raised as the gateway raises its own (2 000
# connections are over a soft limit of 1 024); exec keeps the pid.
(
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  exec "${PIN[@]}" "$BIN/bare_http" --addr 127.0.0.1:0
) >"$WORK/bare_http.log" 2>&1 &
BARE=$!
PIDS+=("$BARE")
BARE_URL=
for _ in $(seq 100); do
  BARE_URL=$(grep -o 'http://[0-9.:]*' "$WORK/bare_http.log" || true)
  [ -n "$BARE_URL" ] && break
  sleep 0.1
done
[ -n "$BARE_URL" ] || { echo "bare_http did not start:" >&2; cat "$WORK/bare_http.log" >&2; exit 1; }
thread_ticks "$BARE" >"$WORK/cpu-before-bare.txt"
# The same scans as the steps' (signed by the demo's keys, bodies and
# all), so that the floor reads and answers what the gateway does.
"$BIN/healthgate-loadgen" --env "$ENV" --url "$BARE_URL" --no-check --threads "$THREADS" --json -q \
  --max-errors 1000000000 --rate "$((RATE1 * 4))" --duration "${DURATION}s" --connections "$CONNECTIONS" \
  --sign-ahead "$SIGN_AHEAD" --max-backlog 1000000 --case-seed 24 >"$WORK/bare-4.json" 2>"$WORK/bare-4.log" || true
thread_ticks "$BARE" >"$WORK/cpu-after-bare.txt"
kill "$BARE" 2>/dev/null || true
wait "$BARE" 2>/dev/null || true

ms() { awk -v u="$1" 'BEGIN { if (u == "null" || u == "") print "n/a"; else printf "%.2f", u / 1000 }'; }
echo
echo "== healthgate overload benchmark: $NCPU CPUs, gateway on CPUs $GATEWAY_CPUS, load generator on $LOADGEN_CPUS" \
  "(load average before the run $LOAD_BEFORE)," \
  "$CONNECTIONS connections, ${DURATION} s a step"
echo "1x = $RATE1 scans/s (the highest ramp step with p99 under $SLO${RATE1:+, or RATE1})"
# refused_p99: the refusals' own p99 (503s, from the intended send).
printf "%-4s %8s %9s %8s %8s %8s %9s %11s %9s %8s %8s %9s %9s\n" step asked/s admitted/s p50ms p99ms p99.9ms \
  overloaded refused_p99 timeouts mismatch drain_s probe_p99 probe_503
for m in 1 2 4; do
  f=$WORK/scan-$m.json
  p=$WORK/probe-$m.json
  read -r asked ok p50 p99 p999 over rp99 tout mism drain < <(jq -r '[.asked_rate,
    ((.statuses["200"] // 0) / .duration_s), .status_latency_us["200"].p50_us, .status_latency_us["200"].p99_us,
    .status_latency_us["200"].p999_us, (.statuses["503"] // 0), (.status_latency_us["503"].p99_us // "null"),
    .errors.timeout, .mismatches, .drain_s] | @tsv' "$f")
  read -r pp99 p503 < <(jq -r '[.latency_us.p99_us, (.statuses["503"] // 0)] | @tsv' "$p")
  printf "%-4s %8.0f %9.0f %8s %8s %8s %9s %11s %9s %8s %8.2f %9s %9s\n" "${m}x" "$asked" "$ok" "$(ms "$p50")" \
    "$(ms "$p99")" "$(ms "$p999")" "$over" "$(ms "$rp99")" "$tout" "$mism" "$drain" "$(ms "$pp99")" "$p503"
done
echo "the scans' load generator itself (a scan sent late counts its lateness as latency), and the admitted scans"
echo "timed from their actual send instead (the gateway's share, with the network and the client's reading):"
for m in 1 2 4; do
  jq -r --arg m "$m" '"  \($m)x: \(.client.late_dispatches) of \(.scheduled) scans sent over 1 ms late (\(100 * .client.late_dispatches / .scheduled * 100 | round / 100) %), the latest \(.client.max_dispatch_lag_us / 1000) ms; admitted from the send: p50 / p99 / p99.9 \(.status_latency_from_send_us["200"] // {} | [.p50_us, .p99_us, .p999_us] | map(if . == null then "n/a" else (. / 10 | round / 100 | tostring) end) | join(" / ")) ms"' \
    "$WORK/scan-$m.json"
done
echo
echo "refusals counted by the gateway during each step (class/reason: count):"
for m in 1 2 4; do
  line=$(join -a 2 -e 0 -o 0,1.2,2.2 "$WORK/refused-before-$m.txt" "$WORK/refused-after-$m.txt" 2>/dev/null |
    awk '{ d = $3 - $2; if (d > 0) printf "%s:%d ", $1, d }')
  echo "  ${m}x: ${line:-none}"
done
echo
echo "the log's tail during each scan run (a record's commit wait: append to durable; an fsync: write + fdatasync):"
for m in 1 2 4; do
  echo "  ${m}x: $(log_tail_delta "$WORK/log-before-$m.txt" "$WORK/log-after-$m.txt")"
done
echo
echo "beside the scans (lookups ${LOOKUP_RATE}/s; tracing every ${TRACE_EVERY} s; admin /readyz every 0.1 s):"
printf "%-4s %-28s %-28s %-26s\n" step "lookups by status" "tracing by status" "readyz p50/p99/max ms"
for m in 1 2 4; do
  lk=$(jq -r '.statuses | to_entries | map("\(.key):\(.value)") | join(" ")' "$WORK/lookup-$m.json")
  read -r r50 r99 rmax < <(times "$WORK/readyz-$m.txt")
  printf "%-4s %-28s %-28s %-26s\n" "${m}x" "$lk" "$(codes "$WORK/trace-$m.txt")" "$r50/$r99/$rmax"
done
echo
# What the gateway's CPU did during each scan run, by thread. The run's
# time includes the load generator signing every token before its clock
# starts (the gateway then serves only the lookups beside), so the share
# of the step's DURATION is a slight overcount.
echo "the gateway's CPU during each scan run (CPU-s; /${DURATION} s = CPUs busy; per request = per scan answered or refused):"
for m in 1 2 4; do
  answers=$(jq -r '.answered' "$WORK/scan-$m.json")
  join -a 2 -e 0 -o 0,1.2,2.2 "$WORK/cpu-before-$m.txt" "$WORK/cpu-after-$m.txt" | awk -v m="$m" -v tck="$TCK" \
    -v d="$DURATION" -v n="$answers" '{
      s = ($3 - $2) / tck; total += s
      if (s > 0) parts = parts sprintf(", %s %.2f", $1, s) }
    END { printf "  %dx: %.2f CPU-s = %.2f CPUs busy, %.1f us per request%s\n", m, total, total / d,
      (n > 0) ? total * 1e6 / n : 0, parts }'
done
# The request workers' share per request at 4x against bare_http's whole
# cost per request at the same rate.
read -r bare_n bare_p99 < <(jq -r '[.answered, .latency_us.p99_us] | @tsv' "$WORK/bare-4.json" 2>/dev/null || echo "0 0")
bare_s=$(join -a 2 -e 0 -o 0,1.2,2.2 "$WORK/cpu-before-bare.txt" "$WORK/cpu-after-bare.txt" |
  awk -v tck="$TCK" '{ s += ($3 - $2) / tck } END { printf "%.2f", s }')
gw_s=$(join -a 2 -e 0 -o 0,1.2,2.2 "$WORK/cpu-before-4.txt" "$WORK/cpu-after-4.txt" |
  awk -v tck="$TCK" '$1 == "request-workers" { s += ($3 - $2) / tck } END { printf "%.2f", s }')
gw_n=$(jq -r '.answered' "$WORK/scan-4.json")
awk -v bs="$bare_s" -v bn="$bare_n" -v bp="$bare_p99" -v gs="$gw_s" -v gn="$gw_n" -v d="$DURATION" -v r="$((RATE1 * 4))" 'BEGIN {
  bu = (bn > 0) ? bs * 1e6 / bn : 0; gu = (gn > 0) ? gs * 1e6 / gn : 0
  printf "  the floor, bare_http asked %d/s on the same CPUs and connections: %.2f CPU-s = %.2f CPUs busy, %.1f us per request, p99 %.2f ms\n", r, bs, bs / d, bu, bp / 1000
  printf "  the gateway'"'"'s request workers at 4x: %.1f us per request = %.2f x the floor\n", gu, (bu > 0) ? gu / bu : 0 }'
# The CPU budget of the 4x step: answering every request (the request
# workers, refusals included) plus the 1x rate's work behind admission
# (verifier, log writer, index) at the cost per admitted scan the step
# measured, against the CPUs the gateway has and how busy the 1x step was.
case "$GATEWAY_CPUS" in
  all) gw_cpus=$NCPU ;;
  *) gw_cpus=$(echo "$GATEWAY_CPUS" | tr , '\n' | awk -F- '{ n += (NF == 2) ? $2 - $1 + 1 : 1 } END { print n }') ;;
esac
behind_s=$(join -a 2 -e 0 -o 0,1.2,2.2 "$WORK/cpu-before-4.txt" "$WORK/cpu-after-4.txt" |
  awk -v tck="$TCK" '$1 == "verifier" || $1 == "log-writer" || $1 == "index" { s += ($3 - $2) / tck } END { printf "%.2f", s }')
busy1=$(join -a 2 -e 0 -o 0,1.2,2.2 "$WORK/cpu-before-1.txt" "$WORK/cpu-after-1.txt" |
  awk -v tck="$TCK" '{ s += ($3 - $2) / tck } END { printf "%.2f", s }')
read -r ok4 ok1_rate p99_1 < <(jq -rs '[(.[0].statuses["200"] // 0), (.[1].statuses["200"] // 0) / .[1].duration_s,
  (.[1].status_latency_us["200"].p99_us // 0)] | @tsv' "$WORK/scan-4.json" "$WORK/scan-1.json")
awk -v gs="$gw_s" -v bs="$behind_s" -v ok4="$ok4" -v ok1="$ok1_rate" -v d="$DURATION" -v n="$gw_cpus" -v b1="$busy1" \
  -v p1="$p99_1" 'BEGIN {
  per = (ok4 > 0) ? bs * 1e6 / ok4 : 0; answer = gs / d; hold = answer + ok1 * per / 1e6
  printf "  the 4x budget: answering every request took %.2f CPUs (request workers) and each admitted scan %.1f us behind\n", answer, per
  printf "    admission (verifier, log writer, index), so holding the 1x rate there needs %.2f of the gateway'"'"'s %d CPUs;\n", hold, n
  printf "    the 1x step itself ran at %.2f busy with admitted p99 %.2f ms\n", b1 / d / n, p1 / 1000 }'
echo
# Against the targets: admitted scans' p99 at 4x within 10 ms; at every
# step at least the 1x rate answered 200 (goodput holds); after the load,
# the probe's p99 back within the SLO and no probe refused (recovered).
ok1=$(jq -r '(.statuses["200"] // 0) / .duration_s' "$WORK/scan-1.json")
echo "against the targets:"
# The SLO in microseconds (it is given as 5ms, 500us or 0.005s).
slo_us=$(awk -v s="$SLO" 'BEGIN { v = s + 0; if (s ~ /ms$/) v *= 1000; else if (s !~ /us$/) v *= 1e6; print v }')
for m in 1 2 4; do
  read -r ok p99 < <(jq -r '[((.statuses["200"] // 0) / .duration_s), (.status_latency_us["200"].p99_us // 1e12)] | @tsv' \
    "$WORK/scan-$m.json")
  awk -v m="$m" -v ok="$ok" -v ok1="$ok1" -v p99="$p99" 'BEGIN {
    printf "  %dx: goodput %.0f/s = %.2f x the 1x answered rate (%s)", m, ok, ok / ok1, (ok >= 0.95 * ok1) ? "held, >= 0.95" : "NOT held, < 0.95"
    if (m == 4) printf "; admitted p99 %.2f ms (target <= 10 ms: %s)", p99 / 1000, (p99 <= 10000) ? "met" : "missed"
    printf "\n" }'
done
for m in 1 2 4; do
  read -r pp99 p503 < <(jq -r '[.latency_us.p99_us, (.statuses["503"] // 0)] | @tsv' "$WORK/probe-$m.json")
  drain=$(jq -r .drain_s "$WORK/scan-$m.json")
  awk -v m="$m" -v p="$pp99" -v r="$p503" -v slo="$slo_us" -v d="$drain" 'BEGIN {
    printf "  after %dx: answers drained in %.2f s; the probe right after: p99 %.2f ms, %d refused (%s)\n", m, d, p / 1000, r,
      (d <= 1 && p <= slo && r == 0) ? "recovered within 1 s" : "NOT recovered within 1 s and the SLO" }'
done
if [ "${PROFILE:-0}" = 1 ] && [ -f "$WORK/perf-4x.data" ]; then
  echo
  echo "where the gateway's CPU went during the 4x step (perf, share of its samples):"
  perf report -i "$WORK/perf-4x.data" --sort comm,dso 2>/dev/null | grep -v '^#' | grep . | head -12
  echo "the request workers' top symbols:"
  perf report -i "$WORK/perf-4x.data" --comm tokio-rt-worker --sort sym 2>/dev/null |
    grep -v '^#' | grep . | head -15
fi
