"""``lipbench evaluate``: certify, attack and verify a model trained elsewhere and add it to the
profile's leaderboard.

* a model built elsewhere: ``--dataset D --model FILE.onnx [--card CARD.yaml] [--name N]``
  (the card defaults to ``FILE.card.yaml`` next to the model);
* a plug-in architecture (entry-point group ``lipbench.architectures``) and its weights:
  ``--dataset D --architecture NAME --weights FILE.safetensors [--card CARD.yaml]``;
* weights written by ``lipbench train`` for one of the profile's variants:
  ``--dataset D --weights FILE.safetensors --variant VARIANT``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_OLD_USAGE = (
    "--model now names a model file (FILE.onnx with --card CARD.yaml); for weights of lipbench's own "
    "architectures use --weights FILE.safetensors --variant VARIANT"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="profile params file")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default=None, help="a model built elsewhere: an ONNX file (pickles are refused)")
    parser.add_argument("--card", type=Path, default=None, help="the model's card (default: MODEL.card.yaml next to it)")
    parser.add_argument("--weights", type=Path, default=None, help="a .safetensors file of a lipbench architecture")
    parser.add_argument("--variant", default=None, help="with --weights: the profile's model variant the weights fit")
    parser.add_argument(
        "--architecture",
        default=None,
        help="with --weights and a card: a plug-in architecture (entry point lipbench.architectures)",
    )
    parser.add_argument("--name", default=None, help="leaderboard name (default: the file's stem)")
    parser.add_argument("--reported", type=float, default=None, help="with --weights: the clean accuracy its authors claim")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars")


def _check_usage(args: argparse.Namespace) -> None:
    """``ValueError`` (exit 2) for a mix of the two forms, or the old ``--model VARIANT --weights FILE``."""
    if args.weights is not None:
        model_file = args.model is not None and Path(args.model).suffix == ".onnx" and Path(args.model).is_file()
        if args.model is not None and not model_file:
            raise ValueError(_OLD_USAGE)
        if model_file:
            raise ValueError("give either --model FILE.onnx [--card CARD] or --weights FILE --variant VARIANT, not both")
        if args.architecture is not None:
            if args.variant is not None or args.reported is not None:
                raise ValueError("--architecture takes its claims from the card: drop --variant and --reported")
            return
        if args.card is not None:
            raise ValueError(
                "--card goes with --model FILE.onnx or --architecture NAME; --weights --variant reads lipbench's record"
            )
        if args.variant is None:
            raise ValueError("--weights needs --variant VARIANT: the profile's model variant whose architecture the weights fit")
    elif args.architecture is not None:
        raise ValueError("--architecture NAME needs --weights FILE.safetensors (its state dict) and a card")
    elif args.model is None:
        raise ValueError("give --model FILE.onnx (a model built elsewhere) or --weights FILE.safetensors --variant VARIANT")
    elif args.variant is not None or args.reported is not None:
        raise ValueError("--variant and --reported go with --weights; a model file's card gives its claims")


def evaluate(args: argparse.Namespace, profile) -> dict:
    """The entry of the model the arguments name (one library call per form); raises ``VerificationFailed``."""
    from lipbench.evaluate.external import evaluate_external, evaluate_foreign

    name = args.name or Path(args.weights or args.model).stem
    if args.architecture is not None:
        return evaluate_foreign(
            profile, args.dataset, args.weights, args.card, name, args.progress, architecture=args.architecture
        )
    if args.weights is not None:
        return evaluate_external(profile, args.dataset, args.variant, args.weights, name, args.progress, args.reported)
    return evaluate_foreign(profile, args.dataset, Path(args.model), args.card, name, args.progress)


def summary_line(entry: dict) -> str:
    """One line: the points, clean, certified and AutoAttack accuracy at the headline epsilon."""
    from lipbench.entries import accuracy_at

    eps, points = entry["eps"], entry["points"]["attacked"]
    return (
        f"{entry['dataset']}/{entry['model']}: on the first {points} test points, clean {entry['clean_acc']:.3f}, "
        f"certified {accuracy_at(entry['certified_acc'], eps):.3f} and AutoAttack {entry['autoattack_acc']} at eps {eps:g}; "
        "verified"
    )


def run(args: argparse.Namespace) -> int:
    from lipbench.evaluate.run import VerificationFailed
    from lipbench.profiles import load_profile

    _check_usage(args)
    profile = load_profile(args.params)
    try:
        entry = evaluate(args, profile)
    except VerificationFailed as failure:
        print(f"lipbench evaluate: FAILED verification (entry written, flagged):\n{failure}", file=sys.stderr)
        return 1
    print(f"lipbench evaluate: {summary_line(entry)}. `lipbench submit` (or `dvc repro`) refreshes the leaderboard.")
    for flag in entry.get("flags", []):
        print(f"lipbench evaluate: flagged: {flag}", file=sys.stderr)
    return 0
