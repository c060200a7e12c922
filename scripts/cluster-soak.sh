#!/usr/bin/env bash
# The replicas' convergence check, for longer than the test suite runs it:
# a nats-server and three healthgate replicas (real binaries) under a mixed
# load while replicas and nats-server are SIGKILLed at random; afterwards
# the replicas are compared holder by holder, every acknowledged scan is
# looked up in every replica's cluster-wide tracing answer and every
# acknowledged authority batch in every replica's state (docs/CLUSTER.md,
# "Checking a cluster"). A failure keeps the replicas' files and says where.
#
# Usage: scripts/cluster-soak.sh [SECONDS] [SEED]   (default 300 s, seed from the clock)
# nats-server is stopped with SIGTERM; HG_CLUSTER_SOAK_NATS_SIGKILL=1 uses
# SIGKILL; HG_CLUSTER_SOAK_NATS_LOSS=1 uses SIGKILL and removes the streams'
# messages while it is down (what a power cut can take before its fsync).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
command -v nats-server >/dev/null || { echo "needs nats-server (apt-get install nats-server)" >&2; exit 1; }
cargo build -q -p healthgate -p healthgate-loadgen --bins
export HG_CLUSTER_SOAK_SECONDS=$secs
if [ -n "${2:-}" ]; then export HG_CLUSTER_SOAK_SEED=$2; fi
exec cargo test -q -p healthgate-tests --test it \
    cluster_faults::three_replicas_under_mixed_load_and_random_kills_converge -- --exact --include-ignored --nocapture
