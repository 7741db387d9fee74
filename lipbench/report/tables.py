"""The report's tables (Markdown, CSV, LaTeX) and the per-model CSVs behind ``dvc plots``.

* ``robustness_<dataset>``: paper Table 1 layout, one row per (model, eps): clean, each
  attack, all attacks combined and certified accuracy, all on the attack stage's points,
  then certified accuracy on the certify stage's larger set and clean accuracy on the
  whole test set (each column's points are named in the notes);
* ``cost``: architecture, parameters, time per epoch, training time, peak memory, certified accuracy;
* ``lipschitz``: verified upper bound, empirical lower bound, verification status;
* ``explain_<dataset>``: saliency metrics, counterfactuals vs certificates (NeurIPS 2023).

A table is a list of :class:`Column` specs and rows of raw values; each column renders its
values to Markdown, LaTeX and CSV. Values are means over the profile's seeds (``± std``
with several seeds); CSV files carry fractions, Markdown and LaTeX percentages. A row
where certified > robust or robust > clean on the same points is refused
(:func:`lipbench.entries.require_accuracy_order`). Light module: no torch, no matplotlib.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lipbench.entries import require_accuracy_order
from lipbench.explain.figures import counterfactual_figures
from lipbench.io import write_text_atomic
from lipbench.report.inputs import ReportInputs
from lipbench.report.labels import attack_label, latex_name
from lipbench.runs import RunKey

__all__ = [
    "Column",
    "Table",
    "latex_escape",
    "robustness_table",
    "cost_table",
    "lipschitz_table",
    "explain_table",
    "all_tables",
    "write_tables",
    "mean_over_seeds",
    "seed_keys",
]

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "^": r"\^{}",
    "~": r"\~{}",
    "$": r"\$",
}


def latex_escape(text: str) -> str:
    if text.startswith("$") and text.endswith("$") and len(text) > 1:
        return text
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text).replace("±", r"$\pm$").replace("ε", r"$\varepsilon$")


def mean_over_seeds(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _spread(values: Sequence[float], scale: float, fmt: str) -> str:
    text = format(scale * mean_over_seeds(values), fmt)
    return f"{text} ± {format(scale * float(np.std(values)), fmt)}" if len(values) > 1 else text


@dataclass(frozen=True)
class Column:
    """One column: its display title, its CSV name, and how its values render.

    Kinds: ``text`` (as is), ``name`` (a paper name: plain in Markdown, math in LaTeX),
    ``percent`` (seed values in [0, 1]: percentages, fractions in CSV), ``number`` (seed
    values, ``fmt``), ``bound`` (a Lipschitz bound: 4 decimals below 100, else 4 digits).
    """

    title: str
    csv: str
    kind: str = "text"
    fmt: str = ".4g"

    def display(self, value: Any) -> str:
        if self.kind == "percent":
            return _spread(value, 100.0, ".1f")
        if self.kind == "number":
            return _spread(value, 1.0, self.fmt)
        if self.kind == "bound":
            return f"{value:.4f}" if abs(value) < 100 else f"{value:.4g}"
        return str(value)

    def latex(self, value: Any) -> str:
        return latex_name(str(value)) if self.kind == "name" else latex_escape(self.display(value))

    def raw(self, value: Any) -> Any:
        if self.kind in ("percent", "number"):
            value = mean_over_seeds(value)
        if isinstance(value, float):
            return "" if np.isnan(value) else f"{value:.6g}"
        return value


@dataclass
class Table:
    """Rows of raw values under a list of column specs, rendered to Markdown, CSV and LaTeX."""

    name: str
    title: str
    columns: list[Column]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    group: int = 0  # rows per group (a rule between groups in LaTeX), 0 for none

    @property
    def display_rows(self) -> list[list[str]]:
        return [[column.display(value) for column, value in zip(self.columns, row)] for row in self.rows]

    def markdown(self) -> str:
        titles = [column.title for column in self.columns]
        lines = [f"## {self.title}", "", "| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
        lines += ["| " + " | ".join(cell.replace("|", r"\|") for cell in row) + " |" for row in self.display_rows]
        return "\n".join(lines + [""] + [f"{note}  " for note in self.notes]).rstrip() + "\n"

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([column.csv for column in self.columns])
        writer.writerows([[column.raw(value) for column, value in zip(self.columns, row)] for row in self.rows])
        return buffer.getvalue()

    def latex(self) -> str:
        spec = "l" * min(3, len(self.columns)) + "r" * max(0, len(self.columns) - 3)
        lines = [
            "% generated by `lipbench report`; needs \\usepackage{booktabs}",
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{{latex_escape(self.title)}}}",
            f"\\label{{tab:lipbench-{self.name}}}",
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(latex_escape(column.title) for column in self.columns) + r" \\",
            "\\midrule",
        ]
        for i, row in enumerate(self.rows):
            if self.group and i and i % self.group == 0:
                lines.append("\\midrule")
            lines.append(" & ".join(column.latex(value) for column, value in zip(self.columns, row)) + r" \\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        return "\n".join(lines) + "\n"


def seed_keys(inputs: ReportInputs, dataset: str, model: str) -> list[RunKey]:
    return [RunKey(dataset, model, seed) for seed in inputs.profile.seeds]


def robustness_table(inputs: ReportInputs, dataset: str) -> Table:
    """Paper Table 1 for one dataset: rows (model, eps); see the module docstring for the points."""
    profile = inputs.profile
    first = inputs.attack(inputs.keys(dataset)[0])
    attacks, epsilons = list(first.attacks), list(first.epsilons)
    n, m = first.n_points, inputs.certify(inputs.keys(dataset)[0]).points
    test = inputs.train[inputs.keys(dataset)[0]].test_examples
    percent = [Column("Clean", "clean", "percent")]
    percent += [Column(attack_label(a), a, "percent") for a in attacks]
    percent += [Column("All attacks", "combined", "percent"), Column("Certified", "certified", "percent")]
    percent += [Column(f"Certified ({m} pts)", "certified_certify_points", "percent")]
    percent += [Column(f"Clean ({test} pts)", "clean_test_set", "percent")]
    columns = [Column("Method", "method", "name"), Column("Model", "model"), Column("ε", "eps"), *percent]
    table = Table(f"robustness_{dataset}", f"Robust and certified accuracy (%) on {dataset}, L2 threat model", columns)
    table.group = len(epsilons)
    for model in profile.models:
        keys = seed_keys(inputs, dataset, model)
        attack = [inputs.attack(key) for key in keys]
        for summary in attack:
            require_accuracy_order(summary)
        certify = [inputs.certify(key) for key in keys]
        train = inputs.train[keys[0]]
        for e, eps in enumerate(epsilons):
            values = [[s.clean_accuracy for s in attack]]
            values += [[s.per_attack_robust_accuracy[a][e] for s in attack] for a in attacks]
            values += [[s.robust_accuracy[e] for s in attack], [s.certified_accuracy[e] for s in attack]]
            values += [[c.certified_at(eps) for c in certify], [inputs.train[key].test_accuracy for key in keys]]
            table.rows.append([train.paper_name or model, model, eps, *values])
    table.notes = [
        f"Accuracies in % (CSV: fractions), mean over seeds {', '.join(map(str, profile.seeds))}.",
        f"Clean, each attack, All attacks and Certified: the same first {n} test points (the attack stage's). "
        f"Certified ({m} pts): the certify stage's first {m} test points. Clean ({test} pts): the whole test set.",
        "All attacks: a point counts as robust only if no attack broke it. Certified: correct with certified radius > ε.",
    ]
    return table


def cost_table(inputs: ReportInputs) -> Table:
    """Training cost of every model beside what it buys (Prach et al., CVPR 2024, Table 4):
    parameters, seconds per epoch, training seconds, peak memory, certified accuracy at the
    dataset's headline eps on the certify stage's points."""
    columns = [
        Column("Dataset", "dataset"),
        Column("Model", "model"),
        Column("Method", "method", "name"),
        Column("Architecture", "architecture"),
        Column("Parameters", "parameters"),
        Column("s / epoch", "seconds_per_epoch", "number", ".3f"),
        Column("Train s", "train_seconds", "number", ".1f"),
        Column("Peak RSS (MB)", "peak_rss_mb", "number", ".0f"),
        Column("Certified at headline ε", "certified_headline", "percent"),
        Column("Device", "device"),
        Column("Seeds", "seeds"),
    ]
    table = Table("cost", "Training cost per model", columns, group=len(inputs.profile.models))
    headlines = []
    for dataset in inputs.profile.datasets:
        eps = inputs.headline_eps(dataset)
        headlines.append(f"{dataset} {eps:g}")
        for model in inputs.profile.models:
            keys = seed_keys(inputs, dataset, model)
            trains = [inputs.train[key] for key in keys]
            table.rows.append(
                [
                    dataset,
                    model,
                    trains[0].paper_name or model,
                    f"{trains[0].architecture} ({trains[0].kit})",
                    trains[0].parameter_count,
                    [mean_over_seeds(t.timing.seconds_per_epoch) for t in trains],
                    [t.timing.train_seconds for t in trains],
                    [t.peak_memory_mb["process_rss"] for t in trains],
                    [inputs.certify(key).certified_at(eps) for key in keys],
                    trains[0].environment.get("device", ""),
                    len(trains),
                ]
            )
    table.notes = [
        "Means over seeds; time per epoch is the mean over epochs. Peak RSS: the training process (torch included). "
        f"Certified: correct with certified radius > ε on the certify stage's points, at the headline ε ({', '.join(headlines)})."
    ]
    return table


def lipschitz_table(inputs: ReportInputs) -> Table:
    """Verified Lipschitz upper bound, empirical lower bound and status of every model."""
    columns = [
        Column("Dataset", "dataset"),
        Column("Model", "model"),
        Column("Method", "method", "name"),
        Column("Seed", "seed"),
        Column("Upper (map)", "upper_whole_map", "bound"),
        Column("Upper (max logit)", "upper_max_per_logit", "bound"),
        Column("Lower (map)", "lower_whole_map", "bound"),
        Column("Lower (max logit)", "lower_max_per_logit", "bound"),
        Column("Lower / upper", "tightness", "number", ".3f"),
        Column("Status", "status"),
        Column("Failures", "failures"),
    ]
    profile = inputs.profile
    table = Table("lipschitz", "Lipschitz constant: strict upper bound vs empirical lower bound", columns)
    table.group = len(profile.models) * len(profile.seeds)
    for key in inputs.keys():
        verify, train = inputs.verify(key), inputs.train[key]
        upper, lower = verify.upper_bound, verify.lower_bound
        ratio = lower.whole_map / upper.whole_map if upper.whole_map else float("nan")
        bounds = [upper.whole_map, upper.max_per_logit, lower.whole_map, lower.max_per_logit]
        table.rows.append(
            [
                key.dataset,
                key.model,
                train.paper_name or key.model,
                key.seed,
                *bounds,
                [ratio],
                verify.status,
                len(verify.failures),
            ]
        )
    table.notes = [
        "Upper: the strict bound certificates use. Lower: the largest gradient norm / ratio found "
        "(points, gradient ascent, attack pairs). A status other than verified means certificates are not trusted."
    ]
    return table


def _optional(value: float | None) -> list[float]:  # None: no point defined it
    return [float("nan") if value is None else value]


_EXPLAIN_COLUMNS = (
    Column("Model", "model"),
    Column("Method", "method", "name"),
    Column("Seed", "seed"),
    Column("Points", "points"),
    Column("Deletion AUC ↓", "deletion_auc", "number", ".3f"),
    Column("Insertion AUC ↑", "insertion_auc", "number", ".3f"),
    Column("µ-fidelity ↑", "mu_fidelity", "number", ".3f"),
    Column("Max-sensitivity ↓", "max_sensitivity", "number", ".3f"),
    Column("Complexity ↓", "complexity", "number", ".3f"),
    Column("Sparseness ↑", "sparseness", "number", ".3f"),
    Column("cos(∇, DeepFool)", "alignment_deepfool_l2", "number", ".3f"),
    Column("Counterfactual / radius", "counterfactual_over_radius", "number", ".3f"),
    Column("Counterfactual / min. adv.", "counterfactual_over_min_adversarial", "number", ".3f"),
    Column("Violations", "counterfactual_violations"),
    Column("Flipped at u = 1 + δ ↑", "flipped_past_boundary", "number", ".3f"),
    Column("|m|/‖∇m‖ / min. adv.", "linearised_over_min_adversarial", "number", ".3f"),
)


def _explain_notes(points: set[int], deltas: set[float | None]) -> list[str]:
    recorded = ", ".join(sorted(f"{d:g}" for d in deltas if d is not None)) or "not recorded"
    return [
        f"Every model on the same first {', '.join(map(str, sorted(points)))} test points (the certify stage's first "
        "points). Saliency: the gradient of the decision margin (binary f, multiclass f_top - f_runner-up). "
        "Deletion / insertion AUC: normalised margin as the most salient features are set to the baseline / revealed "
        "(Petsiuk et al. 2018); µ-fidelity: Pearson correlation of summed saliency with the margin drop over random "
        "subsets (Bhatt et al. 2020); max-sensitivity: largest relative change of the map under uniform noise "
        "(Yeh et al. 2019); complexity: entropy of the normalised |map|; sparseness: its Gini index.",
        "cos(∇, DeepFool): cosine between -∇ and the DeepFool minimal adversarial direction, over the points it broke. "
        "Counterfactual: x - t f(x) ∇f(x) at the first flip; its median distance over the certified radius (>= 1 for a "
        "sound certificate; Violations counts points below it) and over the smallest minimal adversarial norm. "
        f"Flipped at u = 1 + δ: fraction of points whose x - u m(x) ∇m(x) / ‖∇m(x)‖² is classified otherwise (δ = "
        f"{recorded}); |m|/‖∇m‖ / min. adv.: median of the linearised boundary distance over the smallest minimal "
        "adversarial norm (near 1 for an OT-optimal classifier; Serrurier et al. 2023).",
    ]


def explain_table(inputs: ReportInputs, dataset: str) -> Table:
    """Per model of ``dataset``: saliency metrics, adversarial alignment, counterfactual / radius."""
    title = f"Explanations on {dataset}: gradient saliency and counterfactuals"
    table = Table(f"explain_{dataset}", title, list(_EXPLAIN_COLUMNS))
    table.group = len(inputs.profile.seeds)
    points = set()
    deltas = set()  # the delta each model's explain stage used (its recorded settings)
    for key in inputs.keys(dataset):
        explain, train = inputs.explain(key), inputs.train[key]
        figures = counterfactual_figures(inputs.layout.stage_arrays("explain", key))
        deltas.add(explain.settings.get("counterfactual_delta"))
        points.add(explain.points)
        table.rows.append(
            [
                key.model,
                train.paper_name or key.model,
                key.seed,
                explain.points,
                _optional(explain.deletion_auc),
                _optional(explain.insertion_auc),
                _optional(explain.mu_fidelity),
                _optional(explain.max_sensitivity),
                _optional(explain.complexity),
                _optional(explain.sparseness),
                _optional(explain.alignment.get("deepfool_l2")),
                _optional(explain.counterfactual_over_radius),
                _optional(explain.counterfactual_over_min_adversarial),
                len(explain.counterfactual_violations),
                _optional(figures.flipped_past_boundary),
                _optional(figures.linearised_over_min_adversarial),
            ]
        )
    table.notes = _explain_notes(points, deltas)
    return table


def all_tables(inputs: ReportInputs) -> list[Table]:
    datasets = inputs.profile.datasets
    return [
        *(robustness_table(inputs, d) for d in datasets),
        cost_table(inputs),
        lipschitz_table(inputs),
        *(explain_table(inputs, d) for d in datasets),
    ]


def write_tables(tables: Sequence[Table], folder: Path) -> list[Path]:
    """Write each table as ``<name>.md``, ``<name>.csv`` and ``<name>.tex`` under ``folder``."""
    paths = []
    for table in tables:
        for suffix, text in (("md", table.markdown()), ("csv", table.csv()), ("tex", table.latex())):
            path = folder / f"{table.name}.{suffix}"
            write_text_atomic(path, text)
            paths.append(path)
    return paths
