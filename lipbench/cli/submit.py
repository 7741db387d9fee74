"""``lipbench submit``: one command from a model (and its card) to a verified leaderboard entry and the
profile's regenerated leaderboard (``leaderboard.{json,md,html}`` and ``scores.json`` in the profile's reports).

Takes the arguments of ``lipbench evaluate`` (an ONNX file and card, a plug-in architecture's weights and
card, or lipbench weights of a variant). The profile's own records are checked first, so a profile that was
never run is one error naming the stages to run, before any attack. A model that fails the soundness gate
gets its flagged entry and exit 1; the leaderboard is then left as it was.
"""

from __future__ import annotations

import argparse
import sys

from lipbench.cli import evaluate as evaluate_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    evaluate_cli.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from lipbench.evaluate.run import VerificationFailed
    from lipbench.profiles import load_profile
    from lipbench.report.inputs import check_inputs, read_inputs
    from lipbench.report.leaderboard import write_leaderboard

    evaluate_cli._check_usage(args)
    profile = load_profile(args.params)
    check_inputs(profile)  # before any attack: the leaderboard needs the profile's own records
    try:
        entry = evaluate_cli.evaluate(args, profile)
    except VerificationFailed as failure:
        print(
            f"lipbench submit: FAILED verification (entry written, flagged; leaderboard unchanged):\n{failure}", file=sys.stderr
        )
        return 1
    paths = write_leaderboard(read_inputs(profile, check=False), profile.path_of("reports"))
    print(f"lipbench submit: {evaluate_cli.summary_line(entry)}; leaderboard regenerated: {paths['md']}, {paths['html']}")
    for flag in entry.get("flags", []):
        print(f"lipbench submit: flagged: {flag}", file=sys.stderr)
    return 0
