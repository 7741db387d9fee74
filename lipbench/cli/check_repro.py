"""``lipbench check-repro --params P``: compare this checkout's fresh metrics with the committed
ones (``git show REV:...``) within stated tolerances; print a table; exit 1 on any mismatch.

Typical use, after a fresh clone or to re-run everything: ``dvc repro --force`` then
``lipbench check-repro``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="profile params file")
    parser.add_argument("--rev", default="HEAD", help="git revision holding the reference metrics (default HEAD)")
    parser.add_argument("--all", action="store_true", help="list matching metrics too, not only mismatches")


def run(args: argparse.Namespace) -> int:
    from lipbench.profiles import load_profile
    from lipbench.report.check_repro import compare_metrics, format_table

    rows = compare_metrics(load_profile(args.params).path_of("metrics"), args.rev)
    print(format_table(rows, only_mismatches=not args.all))
    return 0 if all(row.ok for row in rows) else 1
