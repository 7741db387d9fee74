#!/usr/bin/env bash
# Set up (tools/bootstrap.sh; tools/chromium.sh for the browser checks) and run the default test suite. Extra arguments go to pytest,
# e.g. `bash tools/test.sh -m slow` for the slow checks. Fails if no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
bash tools/chromium.sh
.venv/bin/ruff check lipbench tests benchmarks
exec .venv/bin/python -m pytest "$@"
