"""``lipbench train --params P --dataset D --model M --seed S``: the DVC ``train`` stage.

Writes to the profile's layout (``lipbench.runs``) unless ``--out`` / ``--metrics`` say
otherwise. Data-parallel: ``torchrun --standalone --nproc_per_node N -m lipbench.cli.main
train ...`` (same arguments; the recipe's batch_size is the global batch; rank 0 writes).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="profile params file")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", required=True, help="a model variant of the profile's 'models' list")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", type=Path, default=None, help="folder for weights.safetensors and checkpoint.pt")
    parser.add_argument("--metrics", type=Path, default=None, help="folder for metrics.json and history.json (git-tracked)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the profile's train.device)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars")


def run(args: argparse.Namespace) -> int:
    from lipbench.profiles import load_profile
    from lipbench.runs import RunKey
    from lipbench.train import run_training
    from lipbench.train.distributed import is_main_process

    key = RunKey(args.dataset, args.model, args.seed)
    summary = run_training(load_profile(args.params), key, args.out, args.metrics, args.device, args.progress)
    if is_main_process():
        print(f"lipbench train: {key.label}: test accuracy {summary.test_accuracy:.4f} in {summary.timing.train_seconds:.1f} s")
    return 0
