"""``lipbench report --params P``: the DVC ``report`` stage (figures, tables, leaderboard, index)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="profile params file")
    parser.add_argument(
        "--notebooks",
        type=Path,
        default=None,
        help="folder of the report notebooks (default: the repository's reports/notebooks)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    from lipbench.profiles import load_profile
    from lipbench.report.build import build_report

    profile = load_profile(args.params)
    outputs = build_report(profile, progress=not args.quiet, notebooks_dir=args.notebooks)
    print(f"lipbench report: {outputs['index']} ({len(outputs['figures'])} figure files, {len(outputs['tables'])} table files)")
    return 0
