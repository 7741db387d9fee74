"""``plots.html``: the charts ``dvc plots show`` draws, as a report page that draws offline.

``dvc plots show`` writes a page that loads vega, vega-lite and vega-embed from a CDN, so it
is blank without internet. ``vega_assets/dvc_plots_template.html`` is a DVC HTML template
with the three libraries inlined (pinned npm releases, written by ``tools/vendor_vega.py``,
hashes in ``vega_assets/manifest.json``, licences in ``vega_assets/LICENSES.txt``):

* ``dvc plots show --html-template lipbench/report/vega_assets/dvc_plots_template.html``
  (or ``plots.html_template`` in ``.dvc/config``) makes DVC's own page offline;
* the report stage renders the same plots with DVC's own converter and renderer into the
  same template: ``reports/<profile>/plots.html`` (accuracy vs L2 eps per dataset and
  model from ``plots/``, test accuracy per epoch from the training histories).

The plot properties are those of ``dvc.yaml`` (:data:`EPS_PLOT`, :data:`HISTORY_PLOT`; a
test keeps them equal). The page holds no date or absolute path: an unchanged report
rebuilds it byte-identically.
"""

from __future__ import annotations

import csv
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lipbench.report.inputs import ReportInputs
from lipbench.runs import Layout, RunKey

__all__ = [
    "ASSETS",
    "TEMPLATE",
    "EPS_PLOT",
    "HISTORY_PLOT",
    "Plot",
    "read_template",
    "inlined_scripts",
    "report_plots",
    "render_plots_page",
    "write_plots_page",
]

ASSETS = Path(__file__).resolve().with_name("vega_assets")
TEMPLATE = ASSETS / "dvc_plots_template.html"
#: dvc.yaml's top-level plot of ``${paths.reports}/plots`` (one chart per CSV file).
EPS_PLOT: dict[str, Any] = {
    "x": "eps",
    "y": ["certified", "combined", "autoattack_l2", "deepfool_l2"],
    "x_label": "L2 eps",
    "y_label": "accuracy",
}
#: dvc.yaml's plot of each training history (top-level ``plots:``, the train_history folder).
HISTORY_PLOT: dict[str, Any] = {"x": "epoch", "y": "test_accuracy"}
_VENDORED = re.compile(r"<!-- vendored: (?P<label>\S+) [^\n]*-->\n<script>(?P<text>.*?)</script>", re.DOTALL)


@dataclass(frozen=True)
class Plot:
    """One chart: its id (a path relative to the report), title, rows and DVC properties."""

    plot_id: str
    title: str
    rows: list[dict[str, Any]]
    props: dict[str, Any]


def read_template() -> str:
    """The committed offline template (``{plot_divs}`` placeholder, scripts inlined)."""
    return TEMPLATE.read_text(encoding="utf-8")


def inlined_scripts(template: str) -> dict[str, str]:
    """``package@version`` -> the script text inlined in ``template``."""
    return {match["label"]: match["text"] for match in _VENDORED.finditer(template)}


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as handle:  # as DVC parses a CSV: every value a string
        return list(csv.DictReader(handle))


def _eps_props(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """:data:`EPS_PLOT`, its y fields restricted to the columns the file has (a profile may
    run fewer attacks; DVC would refuse the plot)."""
    columns = set(rows[0]) if rows else set()
    return {**EPS_PLOT, "y": [field for field in EPS_PLOT["y"] if field in columns]}


def _report_id(path: Path, reports: Path, fallback: str) -> str:
    try:
        return path.relative_to(reports).as_posix()
    except ValueError:
        return fallback


def report_plots(inputs: ReportInputs, plots: Sequence[Path], root: Path) -> list[tuple[str, list[Plot]]]:
    """(section heading, plots): per dataset, accuracy vs eps per model (the CSVs ``plots``
    under ``root``), then test accuracy per epoch per model and seed (histories that exist)."""
    profile, layout = inputs.profile, Layout.of(inputs.profile)
    sections = []
    for dataset in profile.datasets:
        eps = []
        for path in sorted(p for p in plots if p.parent.name == dataset):
            rows = _csv_rows(path)
            if rows:
                eps.append(Plot(path.relative_to(root).as_posix(), f"{dataset} / {path.stem}", rows, _eps_props(rows)))
        sections.append((f"{dataset}: accuracy vs L2 eps (certified, all attacks, AutoAttack, DeepFool)", eps))
        history = []
        for model in profile.models:
            for seed in profile.seeds:
                path = layout.train_history(RunKey(dataset, model, seed))
                if path.is_file():
                    plot_id = _report_id(
                        path, profile.path_of("reports"), f"train_history/{dataset}/{model}/seed{seed}/history.json"
                    )
                    rows = json.loads(path.read_text(encoding="utf-8"))
                    history.append(Plot(plot_id, f"{dataset} / {model} / seed {seed}", rows, dict(HISTORY_PLOT)))
        sections.append((f"{dataset}: test accuracy per epoch (training)", history))
    return [(heading, items) for heading, items in sections if items]


def _renderers(plots: Sequence[Plot]) -> list[Any]:
    """DVC's vega renderers for ``plots``, through the code path of ``dvc plots show``."""
    from dvc.render.match import match_defs_renderers

    definitions = {plot.plot_id: {**plot.props, "title": plot.title} for plot in plots}
    data = {
        "workspace": {
            "definitions": {"data": {"dvc.yaml": {"data": definitions}}},
            "sources": {"data": {plot.plot_id: {"data": plot.rows} for plot in plots}},
        }
    }
    return [match.renderer for match in match_defs_renderers(data)]


def render_plots_page(title: str, sections: Sequence[tuple[str, Sequence[Plot]]], intro: str = "") -> str:
    """The page: ``title``, ``intro`` (HTML) and each section's charts, in the offline template."""
    from dvc_render.html import HTML

    document = HTML(read_template())
    document.with_element(f"<h1>{html.escape(title)}</h1>")
    if intro:
        document.with_element(f"<p>{intro}</p>")
    for heading, plots in sections:
        document.with_element(f"<h2>{html.escape(heading)}</h2>")
        for renderer in _renderers(plots):
            document.with_element(renderer.generate_html())
    return document.embed()


def write_plots_page(inputs: ReportInputs, out: Path, plots: Sequence[Path]) -> Path:
    """Write ``<out>/plots.html`` for the report built in ``out``; return its path."""
    from lipbench.io import write_text_atomic

    intro = (
        "The charts of <code>dvc plots show</code>, interactive (hover for values; each chart's menu saves it as "
        "SVG or PNG and shows its spec). Data: <code>plots/&lt;dataset&gt;/&lt;model&gt;.csv</code> and the training "
        "histories. vega, vega-lite and vega-embed are inlined: the page draws without network. "
        "<a href='index.html'>Back to the report</a>."
    )
    page = render_plots_page(f"lipbench plots: {inputs.profile.name} profile", report_plots(inputs, plots, out), intro)
    target = out / "plots.html"
    write_text_atomic(target, page)
    return target
