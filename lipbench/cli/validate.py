"""``lipbench validate --params P [--out FILE]``: check a whole profile before any stage runs
(the DVC ``validate`` stage; ``--out`` marks it done for the stages after it)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="profile params file")
    parser.add_argument("--out", type=Path, default=None, help="marker file written when the profile is valid")


def run(args: argparse.Namespace) -> int:
    from lipbench.evaluate.validate import validate_profile
    from lipbench.explain.settings import explain_settings
    from lipbench.io import write_json_atomic
    from lipbench.profiles import load_profile

    profile = load_profile(args.params)
    keys = validate_profile(profile)
    for dataset in profile.datasets:  # the explain stage's settings (a later floor than evaluate)
        explain_settings(profile, dataset)
    if args.out is not None:  # constant content: stages after it rerun only when a check fails
        write_json_atomic(args.out, {"profile": profile.name, "valid": True})
    print(f"lipbench validate: {profile.path}: {len(keys)} runs and {len(profile.datasets)} datasets resolve")
    return 0
