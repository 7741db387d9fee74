"""``index.html``: one page linking every figure, table, notebook and leaderboard file of a
report, and the offline plots page, with the environment the results came from and each
stage's runtime.

The page holds no build time or date, so an unchanged report rebuilds byte-identically, and
no absolute path of the machine that built it. Method names render as HTML sub- and
superscripts (:func:`lipbench.report.labels.html_name`).
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lipbench.report.inputs import ReportInputs
from lipbench.report.labels import html_name
from lipbench.report.tables import Column, Table
from lipbench.runs import MODEL_STAGES as STAGES
from lipbench.runs import RunKey
from lipbench.summaries import AttackSummary

__all__ = ["portable_path", "table_html", "environment_rows", "runtime_tables", "render_index"]

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px}"
    "th{background:#f2f2f2}td.n{text-align:right}figure{display:inline-block;margin:0.5em;vertical-align:top;"
    "max-width:560px}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:0.9em}"
    "h2{border-bottom:2px solid #ddd;padding-bottom:0.2em;margin-top:1.5em}.note{color:#555;font-size:0.9em}"
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _link(path: str, text: str | None = None) -> str:
    return f"<a href='{_e(path)}'>{_e(text or path)}</a>"


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]], numeric_from: int = 99) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(f"<td class='n'>{_e(v)}</td>" if i >= numeric_from else f"<td>{_e(v)}</td>" for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _cell(column: Column, text: str) -> str:
    if column.kind == "name":
        return f"<td>{html_name(text)}</td>"
    numeric = column.kind in ("percent", "number", "bound") or _numeric(text)
    return f"<td class='n'>{_e(text)}</td>" if numeric else f"<td>{_e(text)}</td>"


def table_html(table: Table, heading: str = "h3", links: str = "") -> str:
    """A report table as HTML: its title, ``links`` (HTML), the rows and the notes."""
    head = "".join(f"<th>{_e(column.title)}</th>" for column in table.columns)
    rows = "".join(
        "<tr>" + "".join(_cell(column, text) for column, text in zip(table.columns, row)) + "</tr>" for row in table.display_rows
    )
    notes = "".join(f"<p class='note'>{_e(note)}</p>" for note in table.notes)
    return f"<{heading}>{_e(table.title)}</{heading}>{links}<table><tr>{head}</tr>{rows}</table>{notes}"


def portable_path(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> str:
    """``path`` as a report may show it: relative to ``root`` (default: the working directory)
    when it lies below it, else its file name alone (never an absolute path of this machine)."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.relative_to(Path(root or Path.cwd()).resolve()).as_posix()
    except ValueError:
        return path.name


def _distinct(values: Iterable[Any]) -> str:
    seen: list[str] = []
    for value in values:
        text = "-" if value is None or value == "" else str(value)
        if text not in seen:
            seen.append(text)
    return ", ".join(seen) if seen else "-"


def environment_rows(inputs: ReportInputs, root: str | os.PathLike[str] | None = None) -> list[tuple[str, str]]:
    """(field, value) rows: versions, hardware and git commit of the training and evaluation runs
    (the profile's params file relative to ``root``, see :func:`portable_path`)."""
    profile = inputs.profile
    train_envs = [inputs.train[key].environment for key in inputs.keys()]
    eval_envs = [metrics.summary(key).environment for metrics in inputs.stages.values() for key in inputs.keys(metrics.dataset)]
    rows = [
        ("profile", f"{profile.name} ({portable_path(profile.path, root)})"),
        ("datasets", ", ".join(profile.datasets)),
        ("models", ", ".join(profile.models)),
        ("seeds", ", ".join(map(str, profile.seeds))),
    ]
    packages = sorted({name for env in train_envs + eval_envs for name in env.get("versions", {})})
    rows += [
        (f"version: {name}", _distinct(env.get("versions", {}).get(name) for env in train_envs + eval_envs)) for name in packages
    ]
    for field in ("device", "cpu_count", "torch_threads", "platform", "glibc_tunables"):
        rows.append((f"training {field}", _distinct(env.get(field) for env in train_envs)))
        rows.append((f"evaluation {field}", _distinct(env.get(field) for env in eval_envs)))
    rows.append(("git commit", _distinct(env.get("git_commit") for env in train_envs + eval_envs)))
    rows.append(("lipbench source hash", _distinct(env.get("source_fingerprint") for env in train_envs + eval_envs)))
    return rows


def _model_seconds(inputs: ReportInputs, stage: str, key: RunKey) -> tuple[float, str]:
    """A model's seconds in a stage, with the per-attack breakdown for the attack stage."""
    summary = inputs.stages[stage, key.dataset].summary(key)
    breakdown = summary.attack_seconds if isinstance(summary, AttackSummary) else {}
    return summary.seconds, ", ".join(f"{name} {seconds:.1f}" for name, seconds in breakdown.items())


def runtime_tables(inputs: ReportInputs) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """Rows of: training per model; each stage per dataset; each stage per model."""
    train_rows, stage_rows, model_rows = [], [], []
    for key in inputs.keys():
        train = inputs.train[key]
        per_epoch = train.timing.seconds_per_epoch
        train_rows.append(
            [
                key.dataset,
                key.model,
                str(key.seed),
                str(train.epochs),
                f"{np.mean(per_epoch):.3f}" if per_epoch else "-",
                f"{train.timing.train_seconds:.1f}",
                f"{train.timing.wall_seconds:.1f}",
            ]
        )
    for dataset in inputs.profile.datasets:
        metrics = [inputs.stages[stage, dataset] for stage in STAGES]
        recomputed = ", ".join(sorted({str(len(m.recomputed)) for m in metrics}))
        stage_rows.append([dataset, *[f"{m.seconds:.1f}" for m in metrics], recomputed])
        for key in inputs.keys(dataset):
            cells, notes = [], []
            for stage in STAGES:
                total, breakdown = _model_seconds(inputs, stage, key)
                cells.append(f"{total:.2f}")
                if breakdown:
                    notes.append(f"{stage}: {breakdown}")
            model_rows.append([dataset, key.model, str(key.seed), *cells, "; ".join(notes)])
    return train_rows, stage_rows, model_rows


def _figures_html(figures: Sequence[Path], root: Path) -> str:
    stems: dict[str, list[Path]] = {}
    for path in sorted(figures):
        stems.setdefault(path.stem, []).append(path)
    parts = []
    for stem, paths in stems.items():
        png = _e(next((p for p in paths if p.suffix == ".png"), paths[0]).relative_to(root).as_posix())
        links = " | ".join(_link(p.relative_to(root).as_posix(), p.suffix[1:].upper()) for p in paths)
        parts.append(
            f"<figure><a href='{png}'><img src='{png}' "
            f"alt='{_e(stem)}' loading='lazy'></a><figcaption>{_e(stem)}: {links}</figcaption></figure>"
        )
    return "\n".join(parts)


def _plots_html(plots: Sequence[Path], plots_page: Path | None, rel) -> str:
    parts = ["<h2>Plots (<code>dvc plots</code>)</h2>"]
    if plots_page is not None:
        parts.append(
            f"<p>{_link(rel(plots_page))}: the charts of <code>dvc plots show</code> (accuracy vs L2 eps per model, "
            "test accuracy per epoch), interactive; vega, vega-lite and vega-embed are inlined, so it draws offline.</p>"
        )
    parts.append("<p>Data behind them:</p><ul>" + "".join(f"<li>{_link(rel(p))}</li>" for p in sorted(plots)) + "</ul>")
    return "".join(parts)


def render_index(
    inputs: ReportInputs,
    root: Path,
    figures: Sequence[Path],
    tables: Sequence[Table],
    plots: Sequence[Path],
    notebooks: Sequence[Path],
    leaderboard: Mapping[str, Path],
    plots_page: Path | None = None,
    cwd: Path | None = None,
) -> str:
    """The HTML of ``index.html`` for a report whose files live under ``root`` (``cwd``: the
    folder the profile's paths are relative to, see :func:`portable_path`)."""
    profile = inputs.profile
    rel = lambda path: Path(path).relative_to(root).as_posix()  # noqa: E731
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>lipbench report ({_e(profile.name)})</title><style>{_STYLE}</style></head><body>",
        f"<h1>lipbench report: {_e(profile.name)} profile</h1>",
        "<p class='note'>Benchmark of 1-Lipschitz classifiers (Serrurier et al., CVPR 2021, hKR). Generated by "
        "<code>lipbench report</code> from the pipeline's outputs; rebuild with <code>dvc repro</code>.</p>",
        "<h2>Leaderboard</h2><p>" + " | ".join(_link(rel(p), p.name) for p in leaderboard.values()) + "</p>",
        "<h2>Notebooks</h2><ul>" + "".join(f"<li>{_link(rel(p), p.stem)}</li>" for p in notebooks) + "</ul>",
        "<h2>Figures</h2>",
        _figures_html(figures, root),
        "<h2>Tables</h2>",
    ]
    for table in tables:
        links = " | ".join(_link(f"tables/{table.name}.{s}", s.upper()) for s in ("md", "csv", "tex"))
        parts.append(table_html(table, links=f"<p>{links}</p>"))
    parts.append(_plots_html(plots, plots_page, rel))
    parts += ["<h2>Environment</h2>", _table(("field", "value"), environment_rows(inputs, cwd))]
    train_rows, stage_rows, model_rows = runtime_tables(inputs)
    parts += [
        "<h2>Runtimes</h2><h3>train (per model)</h3>",
        _table(("dataset", "model", "seed", "epochs", "s / epoch", "train s", "wall s"), train_rows, numeric_from=3),
        "<h3>certify, attack, verify, explain (per dataset, seconds)</h3>",
        _table(("dataset", *STAGES, "models recomputed"), stage_rows, numeric_from=1),
        "<h3>certify, attack, verify, explain (per model, seconds)</h3>",
        _table(("dataset", "model", "seed", *STAGES, "breakdown"), model_rows, numeric_from=3),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
