"""``lipbench`` command: one sub-command per pipeline stage.

Errors a user can fix (bad params, unknown names, missing data, a beaten certificate)
are printed as one ``lipbench <command>: error: ...`` line with exit status 2 (1 for a
failed verification), without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from lipbench import __version__

# sub-command -> module exposing add_arguments(parser) and run(args) -> int
_COMMANDS = {
    "validate": ("lipbench.cli.validate", "check a whole profile (every run and evaluation setting) before any stage"),
    "prepare": ("lipbench.cli.prepare", "fetch (or copy from the mirror), verify and prepare a dataset"),
    "train": ("lipbench.cli.train", "train every model of a dataset (reusing unchanged ones), or one with --model --seed"),
    "certify": ("lipbench.cli.evaluate_stage", "certified radii and certified accuracy of a dataset's models"),
    "attack": ("lipbench.cli.evaluate_stage", "attack a dataset's models (foolbox + AutoAttack, certificate pruning)"),
    "verify": ("lipbench.cli.evaluate_stage", "soundness gate: lower vs upper bound, no certificate beaten"),
    "explain": ("lipbench.cli.explain", "saliency maps of a dataset's models: faithfulness, stability, counterfactuals"),
    "report": ("lipbench.cli.report", "figures, tables, leaderboard and index.html of a profile"),
    "evaluate": ("lipbench.cli.evaluate", "evaluate an externally trained checkpoint and add it to the leaderboard"),
    "submit": ("lipbench.cli.submit", "evaluate a model built elsewhere and regenerate the profile's leaderboard (md, html)"),
    "check-repro": ("lipbench.cli.check_repro", "compare fresh metrics with the committed ones"),
    "launch": ("lipbench.cli.launch", "run the DVC stages that are not up to date as local or Slurm jobs, then dvc commit them"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipbench", description="Benchmark of 1-Lipschitz classifiers (hKR, CVPR 2021).")
    parser.add_argument("--version", action="version", version=f"lipbench {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in _COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from lipbench.data import DataError  # imported late: keeps --help fast
    from lipbench.registry import RegistryError
    from lipbench.report.notebooks import NotebookError
    from lipbench.train import TrainingDivergedError

    try:
        return int(args._run(args) or 0)
    except (DataError, RegistryError, ValueError, FileNotFoundError, TrainingDivergedError, NotebookError) as error:
        print(f"lipbench {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
