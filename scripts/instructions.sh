#!/usr/bin/env bash
# Instructions per scan on the in-process scan path, counted by callgrind:
# a figure the noise of a shared machine cannot move.
#
#   bare   decode + ed25519-dalek verify_strict, one by one (the ceiling's work)
#   one    Gateway::scan_nowait, one by one (strict single check)
#   batch  Gateway::scan_many_nowait in batches of BATCH (one batch equation)
#
# Only the function that runs the scans is counted (benches/src/bin/
# scan_instructions.rs: `measured`); setup and signing are not.
#
# Settings (environment): SCANS=256 BATCH=64 (several with BATCHES="8 64").
# Prints instructions per scan for each mode and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

SCANS=${SCANS:-256}
BATCHES=${BATCHES:-${BATCH:-64}}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

cargo build --release -p healthgate-benches --bin scan_instructions
BIN=${CARGO_TARGET_DIR:-target}/release/scan_instructions
WORK=$(mktemp -d "${TMPDIR:-/tmp}/healthgate-instructions.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# count NAME ARGS...: instructions in `measured`, divided by SCANS.
count() {
  local name=$1
  shift
  valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.out" --collect-atstart=no \
    --toggle-collect='*scan_instructions::measured*' "$BIN" --scans "$SCANS" "$@" >"$WORK/$name.log" 2>&1 || {
    cat "$WORK/$name.log" >&2
    exit 1
  }
  local total
  total=$(awk '/^summary:/ { print $2 }' "$WORK/$name.out")
  [ -n "$total" ] && [ "$total" -gt 0 ] || { echo "no instructions counted for $name" >&2; exit 1; }
  awk -v t="$total" -v n="$SCANS" 'BEGIN { printf "%.0f", t / n }'
}

BARE=$(count bare --mode bare)
ONE=$(count one --mode one)
printf "%-44s %12s %10s %10s\n" "mode ($SCANS scans)" "instr/scan" "vs bare" "vs one"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
printf "%-44s %12s %10s %10s\n" "bare: decode + verify_strict, one by one" "$BARE" 1.000 "$(ratio "$BARE" "$ONE")"
printf "%-44s %12s %10s %10s\n" "one: scan_nowait, one by one" "$ONE" "$(ratio "$ONE" "$BARE")" 1.000
for b in $BATCHES; do
  N=$(count "batch-$b" --mode batch --batch "$b")
  printf "%-44s %12s %10s %10s\n" "batch: scan_many_nowait, batches of $b" "$N" "$(ratio "$N" "$BARE")" \
    "$(ratio "$N" "$ONE")"
done
