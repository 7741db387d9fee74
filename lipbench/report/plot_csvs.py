"""The per-model CSVs behind ``dvc plots`` (x: eps; y: certified, combined, each attack). Light module."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lipbench.io import write_text_atomic
from lipbench.report.inputs import ReportInputs
from lipbench.report.tables import mean_over_seeds, seed_keys

__all__ = ["plot_rows", "write_plot_csvs"]


def plot_rows(inputs: ReportInputs, dataset: str, model: str) -> tuple[list[str], list[list[float]]]:
    """Columns ``eps, certified, combined, <attack>...`` (the attack points) and one row per eps
    (means over seeds)."""
    attack = [inputs.attack(key) for key in seed_keys(inputs, dataset, model)]
    names = list(attack[0].attacks)
    rows = []
    for e, eps in enumerate(attack[0].epsilons):
        certified = mean_over_seeds([s.certified_accuracy[e] for s in attack])
        combined = mean_over_seeds([s.robust_accuracy[e] for s in attack])
        per_attack = [mean_over_seeds([s.per_attack_robust_accuracy[a][e] for s in attack]) for a in names]
        rows.append([float(eps), certified, combined, *per_attack])
    return ["eps", "certified", "combined", *names], rows


def write_plot_csvs(inputs: ReportInputs, folder: Path) -> list[Path]:
    """``<folder>/<dataset>/<model>.csv`` for ``dvc plots`` (x: eps; y: certified, combined, each attack)."""
    paths = []
    for dataset in inputs.profile.datasets:
        for model in inputs.profile.models:
            columns, rows = plot_rows(inputs, dataset, model)
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows([[f"{v:.6g}" for v in row] for row in rows])
            path = folder / dataset / f"{model}.csv"
            write_text_atomic(path, buffer.getvalue())
            paths.append(path)
    return paths
