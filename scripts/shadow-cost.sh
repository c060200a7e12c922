#!/usr/bin/env bash
# What shadow rules add to a scan. One process builds two gateways on the
# same demo (same keys, holders and signed codes), one with a candidate
# policy, and runs N scans on each; callgrind's inclusive instruction counts
# of the two runs (repeatable on a shared machine) give the cost per scan,
# and three timed runs give the time beside it.
#
# Usage: scripts/shadow-cost.sh [N]   (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
cargo build --release -q -p healthgate-benches --bin shadow_cost
bin=target/release/shadow_cost
out=$(mktemp)
valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" "$n" >/dev/null 2>&1
ir() { callgrind_annotate --inclusive=yes "$out" 2>/dev/null | awk -v f="$1" '!done && $0 ~ f {gsub(",", "", $1); print $1; done = 1}'; }
live=$(ir "shadow_cost::run_live") cand=$(ir "shadow_cost::run_candidate")
rm -f "$out"
echo "instructions a scan: live $((live / n)), with a candidate $((cand / n)), shadow cost $(((cand - live) / n)) ($(awk "BEGIN{printf \"%.2f\", 100*($cand-$live)/$live}") %)"
for _ in 1 2 3; do "$bin" $((10 * n)); done
