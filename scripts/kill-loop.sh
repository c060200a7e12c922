#!/usr/bin/env bash
# The SIGKILL loop at scale: the real gateway is killed at random moments
# ROUNDS times (default 100) while clients scan, check in and push
# authority batches at once; afterwards every acknowledged registration,
# check-in and update must be there exactly once. The test suite runs the
# same test (tests/it/killloop.rs) with 20 rounds.
#
#   scripts/kill-loop.sh            # 100 rounds
#   ROUNDS=300 scripts/kill-loop.sh
#
# Prints the test's summary line (kills, acknowledged scans, check-ins and
# updates, and the seed that replays the kill times).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-100}
cargo build -p healthgate --bins
HEALTHGATE_KILL_ROUNDS=$ROUNDS cargo test -p healthgate-tests --test it -- --exact \
  killloop::kill_nine_never_loses_an_acknowledgement --nocapture 2>&1 | grep -E "kill loop|test result|panicked|FAILED" 
