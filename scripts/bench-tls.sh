#!/usr/bin/env bash
# What TLS costs, with keep-alive: two demo gateways on the same population,
# one plain and one `--tls`, driven in the same run by the same load
# generator (the TLS one through env.json's CA), one after the other.
#
#   lookups  GET /v1/holders/{id}: little work per request, so the TLS
#            record layer shows
#   scans    POST /v1/scan, default case mix, every answer checked: what a
#            turnstile sees
# Each is a step ramp; the table gives the highest step whose p99 stays
# under SLO, the peak achieved rate, and the latency at that step; the
# ratios are TLS / plain. Handshakes happen once per connection before the
# clock starts (keep-alive), so this is the steady-state cost.
#
# Settings (environment): DURATION=8 CONNECTIONS=64 THREADS=<CPUs> STEPS=8
# RAMP_FROM=1000 RAMP_TO=64000 SLO=5ms SIZE=100000 SIGN_AHEAD=1000000 KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-$(nproc)}
STEPS=${STEPS:-8}
RAMP_FROM=${RAMP_FROM:-1000}
RAMP_TO=${RAMP_TO:-64000}
SLO=${SLO:-5ms}
SIZE=${SIZE:-100000}
SIGN_AHEAD=${SIGN_AHEAD:-1000000}

for tool in jq curl; do command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 1; }; done
cargo build --release -q -p healthgate -p healthgate-loadgen
BIN=${CARGO_TARGET_DIR:-target}/release

. scripts/bench-lib.sh
bench_work tls

# start_demo NAME FLAGS...: a demo in $WORK/NAME, ready; its pid in PIDS.
start_demo() {
  local name=$1
  shift
  "$BIN/healthgate" demo --dir "$WORK/$name" --size "$SIZE" --public 127.0.0.1:0 --admin 127.0.0.1:0 "$@" \
    >"$WORK/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  local env=$WORK/$name/env.json
  for _ in $(seq 600); do
    if [ -f "$env" ]; then
      local ca admin
      ca=$(jq -r '.ca_cert // empty' "$env")
      admin=$(jq -r .admin_url "$env")
      [ "$(curl -s ${ca:+--cacert "$ca"} -o /dev/null -w '%{http_code}' "$admin/readyz")" = 200 ] && return
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "$name did not become ready:" >&2
  cat "$WORK/$name.log" >&2
  exit 1
}

echo "starting two demo gateways (population $SIZE), plain and TLS" >&2
start_demo plain
start_demo tls --tls

FACTOR=$(awk -v a="$RAMP_FROM" -v b="$RAMP_TO" -v n="$STEPS" 'BEGIN { printf "%.4f", (n > 1) ? exp(log(b / a) / (n - 1)) : 2 }')
STEP_SECS=$(awk -v d="$DURATION" -v n="$STEPS" 'BEGIN { printf "%.3f", d / n }')
RAMP=(--ramp "$RAMP_FROM..$RAMP_TO" --step "x$FACTOR" --step-duration "${STEP_SECS}s" --slo-p99 "$SLO"
  --max-backlog 20000)

run() {
  local name=$1 demo=$2
  shift 2
  echo "run $name: healthgate-loadgen --env $demo/env.json $*" >&2
  "$BIN/healthgate-loadgen" --env "$WORK/$demo/env.json" --connections "$CONNECTIONS" --threads "$THREADS" --json -q \
    "${RAMP[@]}" "$@" >"$WORK/$name.json" 2>"$WORK/$name.log" || true
  [ -s "$WORK/$name.json" ] || { echo "run $name failed:" >&2; cat "$WORK/$name.log" >&2; exit 1; }
}
run lookup-plain plain --target lookup
run lookup-tls tls --target lookup
run scan-plain plain --case-seed 4 --sign-ahead "$SIGN_AHEAD"
run scan-tls tls --case-seed 4 --sign-ahead "$SIGN_AHEAD"

ms() { awk -v u="$1" 'BEGIN { printf "%.2fms", u / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }
row() {
  local f=$WORK/$1.json
  read -r max peak p50 p99 mism < <(jq -r '[(.slo.max_rate // 0), .slo.peak_achieved_rate,
    ((.slo.latency_at_max // .phases[0].latency_us) | .p50_us, .p99_us), .mismatches] | @tsv' "$f")
  printf "%-16s %10.0f %10.0f %10s %10s %10s\n" "$1" "$max" "$peak" "$(ms "$p50")" "$(ms "$p99")" "$mism"
}
field() { jq -r "$2" "$WORK/$1.json"; }

echo
echo "== TLS cost with keep-alive: $(nproc) CPUs, ramps $RAMP_FROM..$RAMP_TO/s in $STEPS steps of ${STEP_SECS} s," \
  "$CONNECTIONS connections, SLO p99 < $SLO"
printf "%-16s %10s %10s %10s %10s %10s\n" run "max/s SLO" "peak/s" p50 p99 mismatches
for r in lookup-plain lookup-tls scan-plain scan-tls; do row "$r"; done
for what in lookup scan; do
  echo "$what: TLS/plain max rate within the SLO = $(ratio "$(field "$what-tls" '.slo.max_rate // 0')" \
    "$(field "$what-plain" '.slo.max_rate // 0')"), peak = $(ratio "$(field "$what-tls" .slo.peak_achieved_rate)" \
    "$(field "$what-plain" .slo.peak_achieved_rate)")"
done
if [ "$(field scan-plain .mismatches)" != 0 ] || [ "$(field scan-tls .mismatches)" != 0 ]; then
  echo "FAILED: wrong answers under load" >&2
  KEEP=1
  exit 1
fi
