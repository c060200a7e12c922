#!/usr/bin/env bash
# Runs every check that gates a commit on main: installs what the tests need
# and the machine lacks, then format, lints, and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v zbarimg >/dev/null 2>&1 || need+=(zbar-tools)  # QR read-back test
command -v promtool >/dev/null 2>&1 || need+=(prometheus) # metrics lint test
command -v nats-server >/dev/null 2>&1 || need+=(nats-server) # replica tests (docs/CLUSTER.md)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The CLI tests run the real binaries: build them first.
cargo build --workspace --bins
cargo test --workspace
# The inspector's page in headless Chromium (installs what it needs).
scripts/browser-test.sh
