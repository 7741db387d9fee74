"""Arguments shared by the per-model stage commands (train, certify, attack, verify)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="profile params file")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--method", required=True, help="a model variant of the profile's 'methods' list")
    parser.add_argument("--seed", type=int, required=True)
