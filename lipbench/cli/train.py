"""``lipbench train --params P --dataset D --method M --seed S --out DIR``: the DVC ``train`` stage.

Data-parallel: ``torchrun --standalone --nproc_per_node N -m lipbench.cli.main train ...``
(same arguments; the recipe's batch_size is the global batch; rank 0 writes).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="profile params file")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--method", required=True, help="a model variant of the profile's 'methods' list")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for weights.safetensors and checkpoint.pt")
    parser.add_argument("--metrics", type=Path, required=True, help="folder for metrics.json and history.json (git-tracked)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the profile's train.device)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars")


def run(args: argparse.Namespace) -> int:
    from lipbench.profiles import load_profile
    from lipbench.train import run_training
    from lipbench.train.distributed import is_main_process

    profile = load_profile(args.params)
    metrics = run_training(profile, args.dataset, args.method, args.seed, args.out, args.metrics, args.device, args.progress)
    if not is_main_process():
        return 0
    print(
        f"lipbench train: {args.dataset}/{args.method}/seed{args.seed}: test accuracy {metrics['test_accuracy']:.4f} "
        f"in {metrics['timing']['train_seconds']:.1f} s -> {args.out}"
    )
    return 0
