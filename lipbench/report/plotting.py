"""Figures shared by the report notebooks: style, reproducible saving, robustness curves
and the two-moons figures (paper Fig. 1-4). Image grids live in :mod:`lipbench.report.images`.

Every figure is saved as PNG and SVG with fixed metadata and a fixed SVG hash salt, so
rendering the same inputs twice gives byte-identical files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from mpl_toolkits.axes_grid1 import make_axes_locatable

from lipbench.curves import accuracy_from_min_norms, certified_accuracy_curve
from lipbench.io import atomic_path
from lipbench.report.inputs import ReportInputs
from lipbench.report.labels import ATTACK_LABELS, display_name
from lipbench.runs import RunKey

__all__ = [
    "FORMATS",
    "ATTACK_LABELS",
    "apply_style",
    "save_figure",
    "show",
    "palette",
    "RobustnessCurves",
    "LevelSetPanel",
    "robustness_curves",
    "robustness_figure",
    "deepfool_figure",
    "EXPLAIN_PANELS",
    "explain_figure",
    "level_sets_figure",
    "histogram_figure",
]

FORMATS = ("png", "svg")
_SAVE_METADATA = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}}
_EPS_LABEL = r"$\ell_2$ perturbation budget $\varepsilon$"


def apply_style() -> None:
    """Seaborn theme with readable fonts, and the settings that make saved files reproducible."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update(
        {
            "svg.hashsalt": "lipbench-report",
            "svg.fonttype": "path",
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "figure.dpi": 100,
            "axes.titlesize": 11,
            "legend.fontsize": 9,
            "image.interpolation": "nearest",
        }
    )


def save_figure(fig: Figure, folder: str | os.PathLike[str], name: str, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Save ``fig`` as ``folder/name.<format>`` (atomically, fixed metadata), close it, return the paths."""
    paths = []
    for fmt in formats:
        path = Path(folder) / f"{name}.{fmt}"
        with atomic_path(path) as temporary:
            fig.savefig(temporary, format=fmt, metadata=_SAVE_METADATA.get(fmt))
        paths.append(path)
    plt.close(fig)
    return paths


def show(paths: Sequence[Path]) -> None:
    """Display the PNG among ``paths`` in a notebook (the saved bytes, no second render)."""
    from IPython.display import Image, display

    for path in paths:
        if Path(path).suffix == ".png":
            display(Image(filename=str(path)))


def palette(models: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One fixed colour per model, in profile order (the same in every figure)."""
    colors = sns.color_palette("tab10" if len(models) <= 10 else "tab20", max(10, len(models)))  # no repeats
    return {model: colors[i] for i, model in enumerate(models)}


@dataclass
class RobustnessCurves:
    """A model's accuracy-vs-eps data (averaged over the profile's seeds).

    ``certified``, ``clean``, ``per_attack`` and ``combined`` are on the attack stage's
    ``attack_points``; ``deepfool`` and ``certified_deepfool`` on the same ``deepfool_points``
    (DeepFool's longer curve when the profile has one, else the attack points).
    """

    model: str
    label: str
    eps_grid: np.ndarray
    certified: np.ndarray
    deepfool: np.ndarray | None
    certified_deepfool: np.ndarray
    attack_points: int
    deepfool_points: int
    epsilons: list[float]
    clean: float
    per_attack: dict[str, list[float]] = field(default_factory=dict)
    combined: list[float] = field(default_factory=list)


def _model_curves(inputs: ReportInputs, key: RunKey, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, int]:
    """(certified on the attack points, DeepFool and certified on DeepFool's points, their count)."""
    certificates, attacks = inputs.certify_arrays(key), inputs.attack_arrays(key)
    n = len(attacks.clean_correct)
    certified = certified_accuracy_curve(certificates.radius[:n], certificates.correct[:n], grid)
    norms = attacks.deepfool_norms()
    count = n if norms is None else len(norms)
    deepfool = None if norms is None else accuracy_from_min_norms(norms, grid)
    return certified, deepfool, certified_accuracy_curve(certificates.radius[:count], certificates.correct[:count], grid), count


def robustness_curves(
    inputs: ReportInputs, dataset: str, eps_max: float | None = None, points: int = 241
) -> list[RobustnessCurves]:
    """Curves of every model of ``dataset``: certified and DeepFool from the arrays, attacks from the summaries."""
    result = []
    for model in inputs.profile.models:
        keys = [RunKey(dataset, model, seed) for seed in inputs.profile.seeds]
        summaries = [inputs.attack(key) for key in keys]
        epsilons = list(summaries[0].epsilons)
        grid = np.linspace(0.0, eps_max if eps_max is not None else 1.5 * max(epsilons), points)
        curves = [_model_curves(inputs, key, grid) for key in keys]
        deepfool = [curve[1] for curve in curves if curve[1] is not None]
        names = summaries[0].attacks
        result.append(
            RobustnessCurves(
                model=model,
                label=display_name(inputs.train[keys[0]]),
                eps_grid=grid,
                certified=np.mean([curve[0] for curve in curves], axis=0),
                deepfool=np.mean(deepfool, axis=0) if len(deepfool) == len(keys) else None,
                certified_deepfool=np.mean([curve[2] for curve in curves], axis=0),
                attack_points=summaries[0].n_points,
                deepfool_points=curves[0][3],
                epsilons=epsilons,
                clean=float(np.mean([s.clean_accuracy for s in summaries])),
                per_attack={a: np.mean([s.per_attack_robust_accuracy[a] for s in summaries], axis=0).tolist() for a in names},
                combined=np.mean([s.robust_accuracy for s in summaries], axis=0).tolist(),
            )
        )
    return result


def _grid_shape(count: int, max_cols: int) -> tuple[int, int]:
    cols = min(max_cols, count)
    return math.ceil(count / cols), cols


def robustness_figure(title: str, curves: Sequence[RobustnessCurves], max_cols: int = 4) -> Figure:
    """Accuracy vs eps, one panel per model: certified, each attack and all attacks, every curve
    on the attack stage's points (paper Fig. 3/4)."""
    rows, cols = _grid_shape(len(curves), max_cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.9 * rows + 0.8), sharex=True, sharey=True, squeeze=False)
    attack_colors = dict(zip(ATTACK_LABELS, sns.color_palette("colorblind", len(ATTACK_LABELS))))
    markers = dict(zip(ATTACK_LABELS, "os^vD"))
    for ax, item in zip(axes.flat, curves):
        ax.plot(item.eps_grid, item.certified, color="black", lw=2.2, label="certified")
        xs = [0.0, *item.epsilons]
        for name, values in item.per_attack.items():
            ax.plot(
                xs,
                [item.clean, *values],
                marker=markers.get(name, "o"),
                ms=5,
                lw=1,
                ls=":",
                color=attack_colors.get(name),
                label=ATTACK_LABELS.get(name, name),
            )
        ax.plot(xs, [item.clean, *item.combined], marker="X", ms=7, lw=1.4, ls="--", color="crimson", label="all attacks")
        ax.set_title(item.label)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(0, item.eps_grid[-1])
    for ax in axes.flat[len(curves) :]:
        ax.set_visible(False)
    for column in range(cols):  # the lowest panel of each column carries the eps axis
        bottom = axes[(len(curves) - 1 - column) // cols, column]
        bottom.xaxis.set_tick_params(labelbottom=True)
        bottom.set_xlabel(_EPS_LABEL)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False, bbox_to_anchor=(0.5, -0.01))
    points = sorted({item.attack_points for item in curves})
    fig.suptitle(f"{title} (every curve on the same first {'/'.join(map(str, points))} test points)")
    fig.tight_layout(rect=(0, 0.09 if rows > 1 else 0.14, 1, 1))
    return fig


def deepfool_figure(title: str, curves: Sequence[RobustnessCurves], colors: Mapping[str, tuple]) -> Figure:
    """All models on one axes: DeepFool accuracy (solid) and certified accuracy (dashed) vs eps,
    both on DeepFool's points (or, without DeepFool, all attacks and certified on the attack points)."""
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    for item in curves:
        color = colors[item.model]
        if item.deepfool is not None:
            ax.plot(item.eps_grid, item.deepfool, color=color, lw=1.8, label=item.label)
        else:
            label = f"{item.label} (all attacks)"
            ax.plot([0.0, *item.epsilons], [item.clean, *item.combined], color=color, marker="o", label=label)
        ax.plot(item.eps_grid, item.certified_deepfool, color=color, lw=1.3, ls="--")
    ax.plot([], [], color="gray", lw=1.8, label="DeepFool accuracy (solid)")
    ax.plot([], [], color="gray", lw=1.3, ls="--", label="certified accuracy (dashed)")
    ax.set_xlabel(_EPS_LABEL)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, max(item.eps_grid[-1] for item in curves))
    points = sorted({item.deepfool_points for item in curves})
    ax.set_title(f"{title} (first {'/'.join(map(str, points))} test points)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig


@dataclass
class LevelSetPanel:
    """One model's f on a grid (row i = grid_y[i], column j = grid_x[j]) with labelled points."""

    title: str
    grid_x: np.ndarray
    grid_y: np.ndarray
    values: np.ndarray
    points: np.ndarray
    labels: np.ndarray


def level_sets_figure(panels: Sequence[LevelSetPanel]) -> Figure:
    """Level sets of f with the data points and the decision boundary f = 0 (paper Fig. 1/2)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        vmax = float(np.max(np.abs(panel.values))) or 1.0
        levels = np.linspace(-vmax, vmax, 25)
        filled = ax.contourf(panel.grid_x, panel.grid_y, panel.values, levels=levels, cmap="RdBu_r", alpha=0.85)
        ax.contour(panel.grid_x, panel.grid_y, panel.values, levels=levels[::3], colors="k", linewidths=0.4, alpha=0.6)
        ax.contour(panel.grid_x, panel.grid_y, panel.values, levels=[0.0], colors="k", linewidths=2.0)
        for label, (color, marker) in enumerate((("#1f4e9c", "o"), ("#c0392b", "s"))):
            chosen = panel.labels == label
            ax.scatter(
                panel.points[chosen, 0],
                panel.points[chosen, 1],
                s=9,
                c=color,
                marker=marker,
                edgecolors="white",
                linewidths=0.3,
                label=f"class {label}",
            )
        cax = make_axes_locatable(ax).append_axes("right", size="4%", pad=0.1)
        fig.colorbar(filled, cax=cax, label="f(x)", ticks=np.linspace(-vmax, vmax, 5))
        ax.plot([], [], color="k", lw=2, label="f(x) = 0")
        ax.set_title(panel.title)
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.set_aspect("equal")
        ax.legend(loc="lower left", fontsize=8, framealpha=0.85)
    fig.tight_layout()
    return fig


def histogram_figure(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], bins: int = 40) -> Figure:
    """Class-conditional histograms of f(x), one panel per (title, f values, labels)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, values, labels) in zip(axes[0], panels):
        edges = np.linspace(float(values.min()), float(values.max()), bins + 1)
        for label, color in ((0, "#1f4e9c"), (1, "#c0392b")):
            ax.hist(values[labels == label], bins=edges, color=color, alpha=0.6, label=f"class {label}")
        ax.axvline(0.0, color="k", lw=1.5, ls="--", label="f(x) = 0")
        ax.set_title(title)
        ax.set_xlabel("f(x)")
        ax.set_ylabel("number of test points")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


#: The explain figure's panels: (summary field, title, which way is better).
EXPLAIN_PANELS = (
    ("alignment", "cos(−∇, DeepFool direction)", "higher: gradient points to the nearest adversarial"),
    ("mu_fidelity", "µ-fidelity", "higher: saliency predicts the margin drop"),
    ("max_sensitivity", "max-sensitivity", "lower: stable under noise"),
    ("counterfactual_over_radius", "counterfactual / certified radius", "1: the certificate is tight"),
)


def explain_figure(inputs: ReportInputs, dataset: str, colors: Mapping[str, tuple]) -> Figure:
    """Per model of ``dataset`` (seed means), the explain stage's figures of merit side by side
    (Serrurier et al., NeurIPS 2023: hKR against the unconstrained and adversarially trained)."""
    keys = inputs.keys(dataset)
    models = list(dict.fromkeys(key.model for key in keys))
    fig, axes = plt.subplots(1, len(EXPLAIN_PANELS), figsize=(4.2 * len(EXPLAIN_PANELS), 0.32 * len(models) + 1.6))
    for ax, (name, title, better) in zip(axes, EXPLAIN_PANELS):
        values = []
        for model in models:
            summaries = [inputs.explain(key) for key in keys if key.model == model]
            raw = [s.alignment.get("deepfool_l2") if name == "alignment" else getattr(s, name) for s in summaries]
            finite = [v for v in raw if v is not None and math.isfinite(v)]
            values.append(float(np.mean(finite)) if finite else float("nan"))
        ax.barh(range(len(models)), values, color=[colors[m] for m in models])
        labels = [display_name(inputs.train[next(k for k in keys if k.model == m)]) for m in models]
        ax.set_yticks(range(len(models)), labels if ax is axes[0] else [""] * len(models))
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(better, fontsize=8)
        if name == "counterfactual_over_radius":
            ax.axvline(1.0, color="k", lw=1, ls="--")
    points = sorted({inputs.explain(key).points for key in keys})
    fig.suptitle(f"{dataset}: gradient explanations, first {', '.join(map(str, points))} test points", fontsize=11)
    fig.tight_layout()
    return fig
