#!/usr/bin/env bash
# Builds the Debian package of healthgate with cargo-deb, which it installs
# first when missing (at the version pinned below):
#   scripts/build-deb.sh                 release build, target/debian/healthgate_<version>-1_<arch>.deb
#   scripts/build-deb.sh ARGS...         ARGS go to cargo-deb (--output DIR, --fast, ...)
#   scripts/build-deb.sh --install-tool  only make sure cargo-deb is there
# The test suite packages its debug build (`--profile dev --no-build`) to
# check the package's contents without a release build's time.
set -euo pipefail
cd "$(dirname "$0")/.."

# 3.8.0 builds with Rust 1.95 (the project's toolchain); pinned so that a
# new cargo-deb does not change the package under us.
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
  echo "installing cargo-deb $CARGO_DEB_VERSION (a few minutes, once)" >&2
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
if [ "${1:-}" = "--install-tool" ]; then
  exit 0
fi

cargo deb -p healthgate --locked "$@"
