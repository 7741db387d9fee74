"""``lipbench certify|attack|verify --params P --dataset D``: one evaluation stage for every
trained model of a dataset (see :mod:`lipbench.evaluate.run`).

``verify`` is the soundness gate: it exits 1, naming model, point and numbers, when an
empirical lower bound beats a certified upper bound or an attack beats a certificate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="profile params file")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars")


def _headline(summary) -> str:
    from lipbench.summaries import AttackSummary, CertifySummary

    if isinstance(summary, CertifySummary):
        accuracy = ", ".join(f"{e:g}: {a:.3f}" for e, a in zip(summary.epsilons, summary.certified_accuracy))
        return f"L <= {summary.lipschitz_upper_bound.whole_map:.4g}, certified accuracy {accuracy}"
    if isinstance(summary, AttackSummary):
        accuracy = ", ".join(f"{e:g}: {a:.3f}" for e, a in zip(summary.epsilons, summary.robust_accuracy))
        return (
            f"robust accuracy {accuracy}; attack calls saved: {sum(summary.calls_saved_by_certificates.values())} by "
            f"certificates, {sum(summary.calls_saved_by_smaller_eps.values())} by smaller eps"
        )
    lower, upper = summary.lower_bound.whole_map, summary.upper_bound.whole_map
    return f"{summary.status} (lower bound {lower:.4g} <= upper bound {upper:.4g})"


def run(args: argparse.Namespace) -> int:
    from lipbench.evaluate.run import VerificationFailed, run_stage
    from lipbench.profiles import load_profile

    stage = args.command
    try:
        metrics = run_stage(load_profile(args.params), stage, args.dataset, args.progress)
    except VerificationFailed as failure:
        print(f"lipbench verify: FAILED for {args.dataset}:\n{failure}", file=sys.stderr)
        return 1
    for key, summary in metrics.summaries.items():
        reused = " (unchanged, reused)" if summary.reused else ""
        print(f"lipbench {stage}: {key.label}: {_headline(summary)}{reused}")
    return 0
