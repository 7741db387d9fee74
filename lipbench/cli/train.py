"""``lipbench train --params P --dataset D``: the DVC ``train`` stage (every model of the
dataset, ``train.workers`` at a time, unchanged ones reused; :mod:`lipbench.train.stage`).

``--model M --seed S`` trains one model into the same places (and keeps it for the stage
to reuse); with ``--out`` / ``--metrics`` / ``--device`` it writes where they say and keeps
nothing. Data-parallel: ``torchrun --standalone --nproc_per_node N -m lipbench.cli.main
train --model M --seed S ...`` (the recipe's batch_size is the global batch; rank 0 writes).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="profile params file")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default=None, help="one model variant of the profile's 'models' (with --seed)")
    parser.add_argument("--seed", type=int, default=None, help="its seed (with --model)")
    parser.add_argument("--out", type=Path, default=None, help="one model: folder for weights.safetensors and checkpoint.pt")
    parser.add_argument("--metrics", type=Path, default=None, help="one model: folder for metrics.json and history.json")
    parser.add_argument("--device", default=None, help="one model: auto, cpu, cuda or cuda:N (default: train.device)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars")


def _check(args: argparse.Namespace) -> None:
    if (args.model is None) != (args.seed is None):
        raise ValueError("give --model and --seed together (one model), or neither (every model of the dataset)")
    given = [f"--{name}" for name in ("out", "metrics", "device") if getattr(args, name) is not None]
    if args.model is None and given:
        raise ValueError(
            f"{', '.join(given)} apply to one model: add --model M --seed S (the stage writes the profile's layout on "
            "train.device)"
        )


def run(args: argparse.Namespace) -> int:
    from lipbench.profiles import load_profile
    from lipbench.runs import RunKey
    from lipbench.train import run_training
    from lipbench.train.distributed import is_main_process, torchrun_environment
    from lipbench.train.stage import run_train_stage, train_kept

    _check(args)
    profile = load_profile(args.params)
    if args.model is None:
        for key, summary in run_train_stage(profile, args.dataset, args.progress).items():
            print(f"lipbench train: {key.label}: test accuracy {summary.test_accuracy:.4f}")
        return 0
    key = RunKey(args.dataset, args.model, args.seed)
    if (args.out, args.metrics, args.device) == (None, None, None) and torchrun_environment() is None:
        summary = train_kept(str(args.params), key, args.progress)
    else:
        summary = run_training(profile, key, args.out, args.metrics, args.device, args.progress)
    if is_main_process():
        print(f"lipbench train: {key.label}: test accuracy {summary.test_accuracy:.4f} in {summary.timing.train_seconds:.1f} s")
    return 0
