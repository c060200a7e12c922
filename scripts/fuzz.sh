#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of everything that parses
# untrusted bytes: the QR text decoder, scan and check-in bodies, authority
# batches, the revocation filter reader, log records and the state file.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   RUNS=10000000 SANITIZER=none scripts/fuzz.sh 3600
#
# RUNS stops a target after that many executions (SECONDS stays the cap);
# SANITIZER is cargo-fuzz's --sanitizer (default address; none runs the
# same coverage-guided search several times faster, and the code under
# test is safe Rust, where AddressSanitizer has little left to find).
#
# Runs each target (default: all) for SECONDS (default 60) from its seed
# corpus in gateway/fuzz/corpus/TARGET (committed; new inputs go to a
# scratch corpus, so the seeds stay as they are), then prints per target the
# executions, executions a second and whether it crashed or hung. A crash or
# hang leaves its input in gateway/fuzz/artifacts/TARGET and the script
# exits 1. Inputs that take more than 10 s count as hangs.
#
# cargo-fuzz is installed from crates.io when missing. It passes nightly
# flags (-Zsanitizer=address); the stable toolchain takes them with
# RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-60}
RUNS=${RUNS:-0}
SANITIZER=${SANITIZER:-address}
shift || true
ALL=(qr_text request_bodies authority_batch revocation_filter log_record state_file)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}/fuzz
FUZZ_DIR=gateway/fuzz

WORK=$(mktemp -d "${TMPDIR:-/tmp}/healthgate-fuzz.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# The server's own formats need the server built in (feature `gateway`).
features() {
  case "$1" in request_bodies | log_record | state_file) echo --features=gateway ;; *) echo --features= ;; esac
}
failed=0
rows=()
for t in "${TARGETS[@]}"; do
  mkdir -p "$WORK/$t" "$FUZZ_DIR/artifacts/$t"
  echo "fuzzing $t for ${SECS} s" >&2
  rc=0
  cargo fuzz run --fuzz-dir "$FUZZ_DIR" --sanitizer "$SANITIZER" "$(features "$t")" "$t" "$WORK/$t" "$FUZZ_DIR/corpus/$t" -- \
    -max_total_time="$SECS" -runs="$([ "$RUNS" -gt 0 ] && echo "$RUNS" || echo -1)" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$FUZZ_DIR/artifacts/$t/" >"$WORK/$t.log" 2>&1 || rc=$?
  execs=$(awk '/stat::number_of_executed_units/ { print $NF }' "$WORK/$t.log" | tail -1)
  rate=$(awk '/stat::average_exec_per_sec/ { print $NF }' "$WORK/$t.log" | tail -1)
  took=$(awk '/^Done [0-9]+ runs in [0-9]+ second/ { print $5 }' "$WORK/$t.log" | tail -1)
  if [ "$rc" -eq 0 ]; then
    result="no crash, no hang"
  else
    result="FAILED (exit $rc): $(grep -m1 -oE 'ERROR: libFuzzer: [a-z-]+|panicked at [^ ]+|ALARM: working on the last Unit for [0-9]+ seconds' "$WORK/$t.log" || echo 'see the log'); input in $FUZZ_DIR/artifacts/$t/"
    failed=1
    tail -40 "$WORK/$t.log" >&2
  fi
  rows+=("$(printf '%-18s %6s %14s %10s  %s' "$t" "${took:-$SECS}" "${execs:-0}" "${rate:-0}" "$result")")
done
echo
printf '%-18s %6s %14s %10s  %s\n' target secs executions exec/s result
printf '%s\n' "${rows[@]}"
exit "$failed"
