#!/usr/bin/env bash
# Re-resolve dependencies from pyproject.toml ([dev] extra) in a scratch venv and rewrite
# requirements.lock. Run after changing dependencies; commit the new lock.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"${LIPBENCH_PYTHON:-python3.11}" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install --quiet --upgrade pip
"$scratch/venv/bin/python" -m pip install --quiet ".[dev]"
{
  echo "# Exact versions CI and tools/bootstrap.sh install (python 3.11, linux x86_64)."
  echo "# Regenerate with: bash tools/lock.sh   (resolves pyproject.toml's [dev] extra in a fresh venv)"
  echo "# torch and torchvision are the registry's matching CUDA builds; they run on CPU too."
  "$scratch/venv/bin/python" -m pip freeze --exclude-editable | grep -v -E '^(#|lipbench)'
} > requirements.lock
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"
