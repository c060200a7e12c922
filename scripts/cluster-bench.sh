#!/usr/bin/env bash
# The replication figures of docs/PERFORMANCE.md ("Replicas"): a nats-server
# and three release-built replicas on loopback; authority batch to in force
# on every replica, fever at one replica to deny at another, CPU per
# replicated effect on a receiver beside CPU per scan served, catch-up rate
# after a restart (benches/src/bin/cluster_figures.rs says how each is taken).
#
# Usage: scripts/cluster-bench.sh [cluster_figures flags]
#        (default --samples 300 --effects 40000 --holders 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nats-server >/dev/null || { echo "needs nats-server (apt-get install nats-server)" >&2; exit 1; }
cargo build --release -q -p healthgate --bin healthgate -p healthgate-benches --bin cluster_figures
target=${CARGO_TARGET_DIR:-target}
if [ $# -eq 0 ]; then set -- --samples 300 --effects 40000 --holders 200000; fi
exec "$target/release/cluster_figures" "$@"
