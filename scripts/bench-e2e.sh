#!/usr/bin/env bash
# End-to-end benchmark on this machine: the gateway against its ceilings.
#
#   (a) bare_http    fixed answer, no work: the HTTP ceiling (sent the GETs of c)
#   (b) bare_verify  one strict Ed25519 verification per scan: the verification
#                    ceiling (sent green scans)
#   (c) gateway      GET /v1/holders/{id} (inspector key)
#   (d) gateway      POST /v1/scan, default case mix, every answer checked
#   (a)-(d) are step ramps; each reports the highest step whose p99 stays
#   under SLO (and no errors), with the latency at that step.
#   (e) gateway      the morning-peak commuter profile, scaled x SCALE and
#                    compressed to DURATION seconds, every answer checked
#   (f) wrk and healthgate-loadgen against bare_http: requests per CPU-second
#   (g) scripts/bench-tls.sh: the TLS cost with keep-alive (TLS=0 skips it)
#
# After (d), the verifier stage's batch sizes during (d) (from the gateway's
# healthgate_verify_batch_size histogram).
#
# Every run lasts DURATION seconds (plus the drain of what is in flight).
# Prints a table, the ratios (c)/(a) and (d)/(b), and keeps the loadgen's
# JSON summaries in the work folder it names. Exits 1 if (d) or (e) found a
# wrong answer or (e) had errors.
#
# Settings (environment): DURATION=10 CONNECTIONS=64 THREADS=<CPUs> STEPS=12
# RAMP_FROM=1000 RAMP_TO=64000 SLO=5ms SCALE=10 SIZE=100000 SIGN_AHEAD=2000000
# KEEP=1 (keep the work folder).
# REFINE=4 REFINE_SECS=1: after the ramps of (b) and (d), a finer ramp of
# this many sub-steps of REFINE_SECS seconds between the highest step
# within the SLO and the next one, so that their ratio within the SLO is
# read finer than the ramp's factor between steps (REFINE=0: off).
# PARTS=abcdefg: the parts to run, e.g. PARTS=f for the client comparison
# alone (which needs neither the gateway nor bare_verify). REPEAT=1: how
# many times (f) runs, wrk and the load generator taking turns; the table
# gives each repetition and the medians. F_SHARE=80: the GET runs of (f)
# ask this % of wrk's rate; F_TICK=1ms: the second GET run's pacing tick.
# LOADGEN=<path>: another healthgate-loadgen binary for (f) (e.g. an
# earlier build, to compare).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-$(nproc)}
STEPS=${STEPS:-12}
RAMP_FROM=${RAMP_FROM:-1000}
RAMP_TO=${RAMP_TO:-64000}
SLO=${SLO:-5ms}
SCALE=${SCALE:-10}
SIZE=${SIZE:-100000}
# The morning-peak profile lasts 9000 s of real time.
PROFILE_SECS=9000
# A ramp's top steps overload the target on purpose; a small backlog cap
# keeps the drain after them short (the excess counts as overflow errors).
RAMP_BACKLOG=20000
# Runs that sign tokens sign them all before the clock starts (up to this
# many, ~350 bytes each), so that signing does not compete with the target
# for the same CPUs during the measurement.
SIGN_AHEAD=${SIGN_AHEAD:-2000000}
PARTS=${PARTS:-abcdefg}
REPEAT=${REPEAT:-1}
[[ $PARTS =~ ^[a-g]+$ ]] || { echo "PARTS must be letters among a to g, e.g. PARTS=f" >&2; exit 64; }
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || { echo "REPEAT must be a positive number" >&2; exit 64; }
part() { [[ $PARTS == *$1* ]]; }
# (a) to (e) drive the demo gateway, or read its env.json.
GATEWAY=0
for p in a b c d e; do part "$p" && GATEWAY=1; done

need=()
for tool in wrk jq curl; do command -v "$tool" >/dev/null 2>&1 || need+=("$tool"); done
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "$GATEWAY" = 1 ]; then
  cargo build --release -p healthgate -p healthgate-loadgen -p healthgate-benches
else
  cargo build --release -p healthgate-loadgen -p healthgate-benches --bin healthgate-loadgen --bin bare_http
fi
BIN=${CARGO_TARGET_DIR:-target}/release
LOADGEN=${LOADGEN:-$BIN/healthgate-loadgen}

. scripts/bench-lib.sh
bench_work bench

# The process id of each server, for its CPU time (/proc/PID/stat).
declare -A SERVER
# Starts a server that prints "listening on URL"; sets URL.
start_bare() {
  local name=$1
  shift
  "$BIN/$name" --addr 127.0.0.1:0 "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  SERVER[$name]=$!
  for _ in $(seq 100); do
    URL=$(grep -o 'http://[0-9.:]*' "$WORK/$name.log" || true)
    [ -n "$URL" ] && return
    sleep 0.1
  done
  echo "$name did not start:" >&2
  cat "$WORK/$name.log" >&2
  exit 1
}

if [ "$GATEWAY" = 1 ]; then
echo "starting the demo gateway (population $SIZE)" >&2
"$BIN/healthgate" demo --dir "$WORK/demo" --size "$SIZE" --public 127.0.0.1:0 --admin 127.0.0.1:0 >"$WORK/demo.log" 2>&1 &
DEMO=$!
PIDS+=($DEMO)
SERVER[gateway]=$DEMO
ENV=$WORK/demo/env.json
for _ in $(seq 600); do
  [ -f "$ENV" ] && break
  kill -0 "$DEMO" 2>/dev/null || { cat "$WORK/demo.log" >&2; exit 1; }
  sleep 0.1
done
[ -f "$ENV" ] || { echo "no $ENV after 60 s" >&2; cat "$WORK/demo.log" >&2; exit 1; }
ADMIN=$(jq -r .admin_url "$ENV")
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN/readyz")" = 200 ]; do
  kill -0 "$DEMO" 2>/dev/null || { cat "$WORK/demo.log" >&2; exit 1; }
  sleep 0.1
done
echo "gateway ready: $(jq -r .public_url "$ENV")" >&2
fi

start_bare bare_http
BARE_HTTP=$URL
if part b; then
  start_bare bare_verify --key "$(jq -r .issuer_key "$ENV")"
  BARE_VERIFY=$URL
fi

FACTOR=$(awk -v a="$RAMP_FROM" -v b="$RAMP_TO" -v n="$STEPS" 'BEGIN { printf "%.4f", (n > 1) ? exp(log(b / a) / (n - 1)) : 2 }')
STEP_SECS=$(awk -v d="$DURATION" -v n="$STEPS" 'BEGIN { printf "%.3f", d / n }')
COMPRESS=$(awk -v p="$PROFILE_SECS" -v d="$DURATION" 'BEGIN { printf "%.3f", p / d }')
RAMP=(--ramp "$RAMP_FROM..$RAMP_TO" --step "x$FACTOR" --step-duration "${STEP_SECS}s" --slo-p99 "$SLO"
  --max-backlog "$RAMP_BACKLOG")
REFINE=${REFINE:-4}
[[ $REFINE =~ ^[0-9]+$ ]] || { echo "REFINE must be a number of sub-steps, e.g. 4" >&2; exit 64; }
REFINE_SECS=${REFINE_SECS:-1}


# loadgen NAME ARGS...: one run, JSON summary in $WORK/NAME.json, exit code in $WORK/NAME.rc.
# With SRV=<server pid> set, the server's CPU seconds during the run go to
# $WORK/NAME.srv (the load generator reports its own in its summary).
loadgen() {
  local name=$1
  shift
  echo "run $name: healthgate-loadgen $*" >&2
  local rc=0 before=
  [ -n "${SRV:-}" ] && { before=$(ticks "$SRV"); thread_ticks "$SRV" >"$WORK/$name.threads-before"; }
  "$BIN/healthgate-loadgen" --env "$ENV" --connections "$CONNECTIONS" --threads "$THREADS" --json -q "$@" \
    >"$WORK/$name.json" 2>"$WORK/$name.log" || rc=$?
  [ -n "$before" ] && awk -v a="$before" -v b="$(ticks "$SRV")" -v t="$TCK" 'BEGIN { printf "%.2f\n", (b - a) / t }' \
    >"$WORK/$name.srv"
  [ -n "$before" ] && thread_ticks "$SRV" >"$WORK/$name.threads-after"
  echo "$rc" >"$WORK/$name.rc"
  if [ ! -s "$WORK/$name.json" ]; then
    echo "run $name failed (exit $rc):" >&2
    cat "$WORK/$name.log" >&2
    exit 1
  fi
}

# The highest ramp step within the SLO (0: not even the first).
max_rate() { jq -r '.slo.max_rate // 0' "$WORK/$1.json"; }
# refine NAME SEED ARGS...: after NAME's ramp, a finer ramp between its
# highest step within the SLO and the next step: REFINE sub-steps of
# REFINE_SECS each, plus one sub-step below, where a fresh client's first
# requests land (the ramp's rule: the highest step within the SLO counts,
# whatever broke before it). The rate found goes to $WORK/NAME.refined.
refine() {
  local name=$1 seed=$2 lo sub
  shift 2
  lo=$(max_rate "$name")
  if [ "$REFINE" -gt 0 ] && [ "$lo" != 0 ]; then
    sub=$(awk -v f="$FACTOR" -v n="$REFINE" 'BEGIN { printf "%.4f", exp(log(f) / n) }')
    loadgen "$name-refine" --ramp "$(awk -v l="$lo" -v s="$sub" 'BEGIN { printf "%.0f", l / s }')..$(awk -v l="$lo" \
      -v f="$FACTOR" 'BEGIN { printf "%.0f", l * f }')" --step "x$sub" --step-duration "${REFINE_SECS}s" \
      --slo-p99 "$SLO" --max-backlog "$RAMP_BACKLOG" --case-seed "$seed" "$@"
    lo=$(max_rate "$name-refine")
  fi
  echo "$lo" >"$WORK/$name.refined"
}

# (a) and (c) send the same GETs; (b) and (d) the same signed scans.
part a && SRV=${SERVER[bare_http]} loadgen a-bare-http --url "$BARE_HTTP" --target lookup --no-check "${RAMP[@]}"
if part b; then
  B_ARGS=(--url "$BARE_VERIFY" --no-check --mix-cases green=1 --sign-ahead "$SIGN_AHEAD")
  SRV=${SERVER[bare_verify]} loadgen b-bare-verify "${B_ARGS[@]}" "${RAMP[@]}"
  refine b-bare-verify 20 "${B_ARGS[@]}"
fi
part c && SRV=${SERVER[gateway]} loadgen c-gateway-lookup --target lookup "${RAMP[@]}"
# (e) before (d): the ramp's overloaded top steps lose requests, and a lost
# `out` would leave its holder inside for the next run's anti-passback.
part e && loadgen e-morning-peak --profile morning-peak --scale "$SCALE" --compress "$COMPRESS" --case-seed 5 \
  --sign-ahead "$SIGN_AHEAD"
# The verifier stage's batch sizes over (d) alone: the histogram before and after.
batch_sizes() { curl -s "$ADMIN/metrics" | awk '/^healthgate_verify_batch_size_(sum|count|bucket)/ { print $1, $2 }'; }
if part d; then
  batch_sizes >"$WORK/d-batches.before"
  log_tail "$ADMIN" >"$WORK/d-log.before"
  SRV=${SERVER[gateway]} loadgen d-gateway-scan --case-seed 4 --sign-ahead "$SIGN_AHEAD" "${RAMP[@]}"
  batch_sizes >"$WORK/d-batches.after"
  log_tail "$ADMIN" >"$WORK/d-log.after"
  refine d-gateway-scan 40 --sign-ahead "$SIGN_AHEAD"
fi

# (f) the same connection count and threads for wrk and the loadgen; CPU
# (user + system) measured the same way for both, REPEAT times in turns.
# Without the gateway there is no env.json: bare_http takes any API key.
if [ "$GATEWAY" = 1 ]; then F_TARGET=(--env "$ENV"); else F_TARGET=(--api-key bench); fi
timed_loadgen() {
  local name=$1 rate=$2
  shift 2
  /usr/bin/time -f "%U %S" -o "$WORK/$name.time" "$LOADGEN" "${F_TARGET[@]}" --url "$BARE_HTTP" --no-check \
    --connections "$CONNECTIONS" --threads "$THREADS" --rate "$rate" --duration "${DURATION}s" \
    --max-backlog "$RAMP_BACKLOG" --max-errors 1000000000 --json -q "$@" >"$WORK/$name.json" 2>"$WORK/$name.log"
}
# The GET runs ask F_SHARE % of the rate wrk reached: an open loop asked
# exactly the closed loop's saturation rate has no slack, and whenever
# bare_http's capacity on the shared cores dips below it a backlog forms
# that the same rate never drains. Twice: the default pacing tick and
# F_TICK (fewer, larger batches of sends; each send up to a tick late).
F_SHARE=${F_SHARE:-80}
F_TICK=${F_TICK:-1ms}
[[ $F_SHARE =~ ^[1-9][0-9]*$ ]] || { echo "F_SHARE must be a positive whole percentage" >&2; exit 64; }
if part f; then
  for r in $(seq "$REPEAT"); do
    echo "run f-wrk-$r: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s $BARE_HTTP/v1/scan" >&2
    /usr/bin/time -f "%U %S" -o "$WORK/f-wrk-$r.time" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" \
      "$BARE_HTTP/v1/scan" >"$WORK/f-wrk-$r.out"
    WRK_RPS=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' "$WORK/f-wrk-$r.out")
    GET_RATE=$((WRK_RPS * F_SHARE / 100))
    # Signing a fresh token costs ~20 µs on the producer thread: the POST
    # run asks at most SIGN_RATE so that signing keeps up (its cost is
    # reported).
    SIGN_RATE=$((GET_RATE < 20000 ? GET_RATE : 20000))
    echo "run f-loadgen-$r: $LOADGEN GET at $GET_RATE/s (tick default, then $F_TICK), POST /v1/scan at $SIGN_RATE/s" >&2
    timed_loadgen "f-loadgen-get-$r" "$GET_RATE" --target lookup
    timed_loadgen "f-loadgen-tick-$r" "$GET_RATE" --target lookup --tick "$F_TICK"
    timed_loadgen "f-loadgen-scan-$r" "$SIGN_RATE" --mix-cases green=1
  done
fi

cpu() { awk '{ printf "%.2f", $1 + $2 }' "$WORK/$1.time"; }
per_cpu() { awk -v n="$1" -v c="$2" 'BEGIN { if (c > 0) printf "%.0f", n / c; else printf "n/a" }'; }
ms() { awk -v u="$1" 'BEGIN { printf "%.2fms", u / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }
# The median of the numbers on stdin.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2];
  else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Highest rate within the SLO, peak achieved, percentiles at that rate (at
# the first step when even that one broke the SLO).
ramp_row() {
  local label=$1 f=$WORK/$2.json
  read -r max peak p50 p99 p999 errors mism < <(jq -r '[(.slo.max_rate // 0), .slo.peak_achieved_rate,
    ((.slo.latency_at_max // .phases[0].latency_us) | .p50_us, .p99_us, .p999_us),
    .errors.total, .mismatches] | @tsv' "$f")
  [ "$max" = 0 ] && max="<$RAMP_FROM" || max=$(printf %.0f "$max")
  printf "%-34s %10s %10.0f %10s %10s %10s %8s %10s\n" "$label" "$max" "$peak" "$(ms "$p50")" "$(ms "$p99")" \
    "$(ms "$p999")" "$errors" "$mism"
}
peak_rate() { jq -r '.slo.peak_achieved_rate' "$WORK/$1.json"; }
# Ratio of the max rates within the SLO; a bound when the numerator broke it
# at the first step.
slo_ratio() {
  local a b
  a=$(max_rate "$1")
  b=$(max_rate "$2")
  if [ "$a" = 0 ]; then echo "< $(ratio "$RAMP_FROM" "$b")"; else ratio "$a" "$b"; fi
}

echo
echo "== healthgate end-to-end benchmark: $(nproc) CPUs, ${DURATION} s per run, $CONNECTIONS connections," \
  "$THREADS loadgen threads, parts $PARTS"
if part a || part b || part c || part d; then
echo "ramps: $RAMP_FROM..$RAMP_TO/s in $STEPS steps of ${STEP_SECS} s (x$FACTOR); SLO p99 < $SLO;" \
  "percentiles at the highest step within it (or the first)"
printf "%-34s %10s %10s %10s %10s %10s %8s %10s\n" run "max/s SLO" "peak/s" p50 p99 p99.9 errors mismatches
part a && ramp_row "(a) bare_http" a-bare-http
part b && ramp_row "(b) bare_verify" b-bare-verify
part c && ramp_row "(c) gateway GET /v1/holders/{id}" c-gateway-lookup
part d && ramp_row "(d) gateway POST /v1/scan" d-gateway-scan
if part a && part b && part c && part d; then
echo "ratios (max rate within the SLO): (c)/(a) = $(slo_ratio c-gateway-lookup a-bare-http)," \
  "(d)/(b) = $(slo_ratio d-gateway-scan b-bare-verify)"
echo "ratios (peak achieved):           (c)/(a) = $(ratio "$(peak_rate c-gateway-lookup)" "$(peak_rate a-bare-http)")," \
  "(d)/(b) = $(ratio "$(peak_rate d-gateway-scan)" "$(peak_rate b-bare-verify)")"
fi
if part b && part d && [ "$REFINE" -gt 0 ]; then
  b_ref=$(cat "$WORK/b-bare-verify.refined")
  d_ref=$(cat "$WORK/d-gateway-scan.refined")
  echo "refined within the SLO ($REFINE sub-steps of ${REFINE_SECS} s from a ramp's last step within it to the next):" \
    "(b) $(printf %.0f "$b_ref")/s, (d) $(printf %.0f "$d_ref")/s ($(jq -r .mismatches \
    "$WORK/d-gateway-scan-refine.json" 2>/dev/null || echo 0) wrong answers);" \
    "(d)/(b) = $(if [ "$d_ref" = 0 ]; then echo "n/a"; else ratio "$d_ref" "$b_ref"; fi)"
fi
# Who had the CPU: the two cores are shared, so a ramp's top is where
# client and server together ran out of it. The server's CPU comes from
# /proc, the client's from its own report (its signing ahead, done before
# the clock starts while the server idles, shown apart).
echo "CPU over each ramp: the client (signing apart) and the server, and answers per server CPU-second"
printf "%-34s %12s %12s %12s %16s\n" run "client CPU-s" "signing" "server CPU-s" "answers/server-s"
per_server() { awk -v n="$(jq -r .answered "$WORK/$1.json")" -v c="$(cat "$WORK/$1.srv")" 'BEGIN { if (c > 0) printf "%.0f", n / c; else print "n/a" }'; }
cpu_row() {
  [ -f "$WORK/$2.srv" ] || return 0
  read -r c p < <(jq -r '[.client.cpu_s, .client.producer_cpu_s] | @tsv' "$WORK/$2.json")
  printf "%-34s %12.2f %12.2f %12s %16s\n" "$1" "$(awk -v c="$c" -v p="$p" 'BEGIN { print c - p }')" "$p" \
    "$(cat "$WORK/$2.srv")" "$(per_server "$2")"
}
part a && cpu_row "(a) bare_http" a-bare-http
part b && cpu_row "(b) bare_verify" b-bare-verify
part c && cpu_row "(c) gateway GET /v1/holders/{id}" c-gateway-lookup
part d && cpu_row "(d) gateway POST /v1/scan" d-gateway-scan
if part d; then
  # Where the gateway's CPU went during (d), by thread, per scan answered.
  join -a 2 -e 0 -o 0,1.2,2.2 "$WORK/d-gateway-scan.threads-before" "$WORK/d-gateway-scan.threads-after" |
    awk -v t="$TCK" -v n="$(jq -r .answered "$WORK/d-gateway-scan.json")" '{
      s = ($3 - $2) / t
      if (s > 0 && n > 0) parts = parts sprintf("%s%s %.1f", (parts == "") ? "" : ", ", $1, s * 1e6 / n) }
    END { print "(d) the gateway'"'"'s CPU per scan answered, by thread (µs): " parts }'
fi
if part b && part d; then
  echo "ratio of answers per server CPU-second, (d)/(b) = $(ratio "$(per_server d-gateway-scan)" "$(per_server b-bare-verify)")" \
    "(scans per core-second end to end, whatever the client took)"
fi
fi

# Batches of (d): count, mean size, and the share of batches of each size bucket.
part d && awk 'NR == FNR { before[$1] = $2; next } { d[$1] = $2 - before[$1] }
  END {
    n = d["healthgate_verify_batch_size_count"]; sum = d["healthgate_verify_batch_size_sum"]
    if (n > 0) printf "(d) verifier batches: %d batches, %d codes, mean %.1f codes a batch; ", n, sum, sum / n
    else printf "(d) verifier batches: none (verification inline?)"
    prev = 0
    for (le = 1; le <= 256; le *= 2) {
      k = "healthgate_verify_batch_size_bucket{le=\"" le "\"}"
      if (n > 0 && (k in d)) { printf "<=%d: %.0f%% ", le, 100 * (d[k] - prev) / n; prev = d[k] }
    }
    print ""
  }' "$WORK/d-batches.before" "$WORK/d-batches.after"
# The log during (d)'s ramp: how many records waited longer than the SLO
# for their fsync, whatever the load.
part d && echo "(d) the log (commit wait: append to durable): $(log_tail_delta "$WORK/d-log.before" "$WORK/d-log.after")"

if part e; then
E=$WORK/e-morning-peak.json
read -r e_asked e_achieved e_p50 e_p99 e_p999 e_max e_errors e_mism e_unv e_ok < <(jq -r '[.asked_rate,
  .achieved_rate, .latency_us.p50_us, .latency_us.p99_us, .latency_us.p999_us, .latency_us.max_us, .errors.total,
  .mismatches, .unverifiable, .ok] | @tsv' "$E")
echo
echo "(e) morning-peak x$SCALE compressed x$COMPRESS: $(jq -r .scheduled "$E") scans, asked $(printf %.0f "$e_asked")/s" \
  "on average, achieved $(printf %.0f "$e_achieved")/s"
printf "    p50 %s  p99 %s  p99.9 %s  max %s  errors %s  mismatches %s (unverifiable %s): %s\n" "$(ms "$e_p50")" \
  "$(ms "$e_p99")" "$(ms "$e_p999")" "$(ms "$e_max")" "$e_errors" "$e_mism" "$e_unv" \
  "$([ "$e_ok" = true ] && echo PASS || echo FAIL)"
jq -r '.phases[] | "    \(.name): asked \(.asked_rate | round)/s, achieved \(.achieved_rate | round)/s, p99 \(.latency_us.p99_us / 1000)ms"' "$E"
fi

if part f; then
echo
echo "(f) requests per CPU-second against bare_http ($CONNECTIONS connections, $THREADS threads, ${DURATION} s," \
  "$REPEAT repetitions, loadgen $LOADGEN):"
row() { printf "    %-40s %9s answers %8.0f/s  %6s CPU-s  %8s per CPU-s%s\n" "$@"; }
# Kept up: nothing dropped at the backlog cap and no backlog at the median
# (p50 < 10 ms). Falling behind costs more per answer (task switches in
# the kernel), so those repetitions are told apart.
kept_up() { [ "$(jq -r '.errors.total == 0 and .latency_us.p50_us < 10000' "$1")" = true ]; }
for r in $(seq "$REPEAT"); do
  WRK_REQS=$(awk '/requests in/ { print $1 }' "$WORK/f-wrk-$r.out")
  WRK_RPS=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' "$WORK/f-wrk-$r.out")
  WRK_CPU=$(cpu "f-wrk-$r")
  WRK_PER=$(per_cpu "$WRK_REQS" "$WRK_CPU")
  echo "$WRK_PER" >>"$WORK/f-wrk.per"
  echo "  repetition $r:"
  row "wrk (closed loop, GET)" "$WRK_REQS" "$WRK_RPS" "$WRK_CPU" "$WRK_PER" ""
  for v in get tick; do
    G=$WORK/f-loadgen-$v-$r.json
    G_N=$(jq -r .answered "$G")
    G_PER=$(per_cpu "$G_N" "$(cpu "f-loadgen-$v-$r")")
    ratio "$G_PER" "$WRK_PER" >>"$WORK/f-ratio-$v"
    echo >>"$WORK/f-ratio-$v"
    if kept_up "$G"; then
      ratio "$G_PER" "$WRK_PER" >>"$WORK/f-ratio-$v-kept"
      echo >>"$WORK/f-ratio-$v-kept"
    fi
    tick=default
    [ "$v" = tick ] && tick=$F_TICK
    row "loadgen (open loop, GET, tick $tick)" "$G_N" "$(jq -r .achieved_rate "$G")" "$(cpu "f-loadgen-$v-$r")" \
      "$G_PER" " ($(ratio "$G_PER" "$WRK_PER") x wrk; p50 $(ms "$(jq -r .latency_us.p50_us "$G")"), $(jq -r \
      .errors.total "$G") errors)"
  done
  SCAN=$WORK/f-loadgen-scan-$r.json
  SCAN_N=$(jq -r .answered "$SCAN")
  SCAN_CPU=$(cpu "f-loadgen-scan-$r")
  SIGN_CPU=$(jq -r '.client.producer_cpu_s' "$SCAN")
  row "loadgen (POST /v1/scan at $(jq -r .asked_rate "$SCAN" | xargs printf %.0f)/s)" "$SCAN_N" \
    "$(jq -r .achieved_rate "$SCAN")" "$SCAN_CPU" "$(per_cpu "$SCAN_N" "$SCAN_CPU")" \
    ", $(per_cpu "$SCAN_N" "$(awk -v a="$SCAN_CPU" -v b="$SIGN_CPU" 'BEGIN { print a - b }')") without signing"
done
echo "  the GET runs asked ${F_SHARE} % of wrk's rate; wrk's median $(median <"$WORK/f-wrk.per") per CPU-s"
for v in get tick; do
  tick=default
  [ "$v" = tick ] && tick=$F_TICK
  touch "$WORK/f-ratio-$v-kept"
  echo "  loadgen / wrk, tick $tick: median of the repetitions' ratios $(median <"$WORK/f-ratio-$v");" \
    "$(grep -c . "$WORK/f-ratio-$v-kept") of $REPEAT kept up (nothing dropped, p50 < 10 ms)," \
    "their median $(median <"$WORK/f-ratio-$v-kept")"
done
fi

D_MISM=0
part d && D_MISM=$(jq -r .mismatches "$WORK/d-gateway-scan.json")
if { part e && [ "$e_ok" != true ]; } || [ "$D_MISM" != 0 ]; then
  echo "FAILED: wrong answers or errors under load (see $WORK/{d-gateway-scan,e-morning-peak}.log)" >&2
  KEEP=1
  exit 1
fi

# (g) what TLS costs with keep-alive: plain and --tls demos side by side in
# one run (its own script, so that it can also run alone). TLS=0 skips it.
if part g && [ "${TLS:-1}" = 1 ]; then
  echo
  DURATION=$DURATION CONNECTIONS=$CONNECTIONS THREADS=$THREADS SIZE=$SIZE SLO=$SLO scripts/bench-tls.sh
fi
