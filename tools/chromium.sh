#!/usr/bin/env bash
# Install Debian's chromium for the report's headless-browser checks (tests/report/browser.py)
# when it is missing and this user can (root, or passwordless sudo): about 100 MB download,
# 400 MB on disk, ~30 s. Otherwise say so: those checks then skip, unless
# LIPBENCH_REQUIRE_CHROMIUM=1 (CI) turns the skip into a failure.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "chromium: not installed and this user cannot apt-get; the browser checks will skip (apt-get install chromium)" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: not installed and no apt-get; the browser checks will skip" >&2
  exit 0
fi
echo "chromium: installing Debian's chromium for the report's browser checks"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
