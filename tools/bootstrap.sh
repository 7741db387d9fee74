#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the locked dependencies plus lipbench itself.
# Idempotent: reruns only reinstall when requirements.lock or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin="${LIPBENCH_PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python_bin="$candidate"; break; fi
  done
fi
if [ -z "$python_bin" ]; then
  echo "bootstrap: no python3 found; install Python 3.11 or set LIPBENCH_PYTHON=/path/to/python3.11" >&2
  exit 1
fi
version=$("$python_bin" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$version" in
  3.11|3.12) ;;
  *) echo "bootstrap: $python_bin is Python $version; lipbench needs 3.11 (or 3.12). Set LIPBENCH_PYTHON." >&2; exit 1 ;;
esac

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $python_bin ($version)"
  "$python_bin" -m venv .venv
fi

stamp=.venv/.lipbench-install-stamp
wanted=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "bootstrap: installing locked dependencies (first run: a few minutes, ~6 GB with torch)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.lock
  .venv/bin/python -m pip install --quiet --no-deps -e .
  echo "$wanted" > "$stamp"
fi
.venv/bin/python -c "import torch, torchvision, lipbench; print(f'bootstrap: ready (torch {torch.__version__}, torchvision {torchvision.__version__}, lipbench {lipbench.__version__})')"
