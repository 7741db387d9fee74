#!/usr/bin/env bash
# Set up (tools/bootstrap.sh) and run the DVC pipeline with .venv active, so the stages
# find the `lipbench` command. Arguments go to `dvc repro`:
#   bash tools/repro.sh                                   quick profile (embedded data)
#   bash tools/repro.sh pipelines/mnist/dvc.yaml          the MNIST profile
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
# shellcheck disable=SC1091
source .venv/bin/activate
exec dvc repro "$@"
