"""``lipbench explain --params P --dataset D``: the explain stage for every trained model of a
dataset (see :mod:`lipbench.explain.run`), after its certify and attack stages.

Writes, per model, ``<evaluation>/explain/<dataset>/<model>/seed<k>/explain.npz`` then
``summary.json`` (last: it marks the model's outputs complete), and the dataset's
``<metrics>/explain/<dataset>.json``; every file atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="profile params file")
    parser.add_argument("--dataset", required=True)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def run(args: argparse.Namespace) -> int:
    from lipbench.explain.run import STAGE, explain_dataset
    from lipbench.profiles import load_profile
    from lipbench.records import without_measurements
    from lipbench.runs import Layout
    from lipbench.summaries import write_summary

    profile = load_profile(args.params)
    outputs = explain_dataset(profile, args.dataset)
    layout = Layout.of(profile)
    for key, summary in outputs.metrics.summaries.items():
        outputs.arrays[key].save(layout.stage_arrays(STAGE, key))
        write_summary(layout.stage_summary(STAGE, key), without_measurements(summary))  # the DVC output
        print(
            f"lipbench explain: {key.label}: deletion AUC {_number(summary.deletion_auc)}, insertion AUC "
            f"{_number(summary.insertion_auc)}, µ-fidelity {_number(summary.mu_fidelity)}, median counterfactual "
            f"distance / certified radius {_number(summary.counterfactual_over_radius)}"
        )
    outputs.metrics.write(layout.stage_metrics(STAGE, args.dataset))
    return 0
