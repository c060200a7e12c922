#!/usr/bin/env bash
# The inspector's page in a real browser (tests/browser/inspector.py).
#
# Installs what the test needs and the machine lacks: Debian's chromium and
# chromium-driver, a Chinese font (the page is bilingual and the screenshots
# must show it), and a Python virtualenv in target/browser-venv with the
# pinned packages of tests/browser/requirements.txt. Then starts
# `healthgate demo` on free ports and drives headless Chromium through the
# inspector's scenarios. Screenshots go to target/inspector-screens/.
# Prints `browser: N passed, M failed`; exits non-zero on any failure or on
# anything missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v fc-list >/dev/null 2>&1 && fc-list :lang=zh | grep -q . || need+=(fonts-wqy-microhei)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

venv=target/browser-venv
req=tests/browser/requirements.txt
# Rebuilt when the pinned list changes.
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/requirements.txt"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$venv/requirements.txt"
fi

bin=target/debug/healthgate
cargo build -q -p healthgate --bin healthgate
exec "$venv/bin/python" tests/browser/inspector.py --bin "$bin" --out target/inspector-screens "$@"
