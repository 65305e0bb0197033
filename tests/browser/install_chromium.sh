#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium and its WebDriver for tests/test_leaderboard_browser.py.
# Best effort: without root or apt the browser test skips and says why.
set -u
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq \
  && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium chromium-driver >/dev/null \
  || echo "install_chromium.sh: could not install chromium (the browser test will skip)" >&2
exit 0
