#!/usr/bin/env bash
# Runs every check that gates a commit on main: installs what the tests need
# and the machine lacks, then format, lints, and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v zbarimg >/dev/null 2>&1 || need+=(zbar-tools)  # QR read-back test
# promtool (metrics lint, rule unit tests) and prometheus (the live check)
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)  # unit file check
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)            # package contents
# schemathesis runs in a virtualenv made below
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3 python3-venv)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server) # replica tests (docs/CLUSTER.md)
command -v ip >/dev/null 2>&1 || need+=(iproute2)             # network namespaces for the partition tests
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${need[*]}" >&2
  $sudo apt-get update -qq
  # The prometheus package would start a server on :9090 where the init
  # system allows it; the tests start their own, so keep services down
  # during the install (unless the machine already has a policy).
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if [ -n "$own_policy" ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
fi

# Python tools, pinned whole in scripts/requirements-test.txt, in a
# virtualenv under the target directory; made again only when the pins change.
venv="${CARGO_TARGET_DIR:-target}/venv"
if ! cmp -s scripts/requirements-test.txt "$venv/requirements-test.txt"; then
  echo "installing the Python test tools into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/requirements-test.txt
  cp scripts/requirements-test.txt "$venv/requirements-test.txt"
fi

# cargo-deb, for the package test (pinned in the script).
scripts/build-deb.sh --install-tool

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The CLI tests run the real binaries: build them first.
cargo build --workspace --bins
cargo test --workspace
# The inspector's page in headless Chromium (installs what it needs).
scripts/browser-test.sh
