"""``lipbench evaluate --dataset D --model M --weights FILE``: certify, attack and verify an
externally trained checkpoint (safetensors only) and add it to the profile's leaderboard."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="profile params file")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", required=True, help="the profile's model variant whose architecture the weights fit")
    parser.add_argument("--weights", type=Path, required=True, help="a .safetensors file (pickles are refused)")
    parser.add_argument("--name", default=None, help="leaderboard name (default: the file's stem)")
    parser.add_argument("--reported", type=float, default=None, help="clean accuracy the model's authors claim (fraction)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars")


def run(args: argparse.Namespace) -> int:
    from lipbench.entries import accuracy_at
    from lipbench.evaluate.external import evaluate_external
    from lipbench.evaluate.run import VerificationFailed
    from lipbench.profiles import load_profile

    name = args.name or args.weights.stem
    try:
        entry = evaluate_external(
            load_profile(args.params), args.dataset, args.model, args.weights, name, args.progress, args.reported
        )
    except VerificationFailed as failure:
        print(f"lipbench evaluate: {name} FAILED verification (entry written, flagged):\n{failure}", file=sys.stderr)
        return 1
    eps, points = entry["eps"], entry["points"]["attacked"]
    print(
        f"lipbench evaluate: {entry['dataset']}/{name}: on the first {points} test points, clean {entry['clean_acc']:.3f}, "
        f"certified {accuracy_at(entry['certified_acc'], eps):.3f} and AutoAttack {entry['autoattack_acc']} at eps {eps:g}; "
        "verified. Run `dvc repro` to refresh the leaderboard."
    )
    return 0
