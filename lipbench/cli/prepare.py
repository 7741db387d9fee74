"""``lipbench prepare --params P --dataset D``: the DVC ``prepare`` stage."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="profile params file")
    parser.add_argument("--dataset", required=True, help="registered dataset name")
    parser.add_argument(
        "--mirror",
        default=None,
        help="torchvision root holding the original archives (overrides prepare.mirror and $LIPBENCH_DATA_MIRROR)",
    )


def run(args: argparse.Namespace) -> int:
    from lipbench.data import prepare_dataset
    from lipbench.profiles import load_profile

    profile = load_profile(args.params)
    profile.check_member("dataset", args.dataset)
    mirror = args.mirror or profile.mirror()
    manifest = prepare_dataset(args.dataset, profile.path_of("data"), profile.prepare_params(args.dataset), mirror)
    splits = manifest.get("splits", {})
    counts = ", ".join(f"{name} {split.get('count')}" for name, split in splits.items())
    print(f"lipbench prepare: {args.dataset} ready under {profile.path_of('data')} ({counts})")
    return 0
