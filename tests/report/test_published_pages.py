"""The published pages of a report built from fixture outputs: clean (no warning, no absolute
path, no CDN, names as HTML) and, in headless Chromium with the network off, drawn (not
blank; the plots page draws every chart)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from browser import dump_dom, ink, screenshot
from report_fixtures import MODELS, write_outputs

from lipbench.profiles import load_profile
from lipbench.report.build import build_report
from lipbench.report.vega import inlined_scripts

REPOSITORY = Path(__file__).resolve().parents[2]
DATASETS = ("moons", "digits")
PLOTS = 2 * len(DATASETS) * len(MODELS)  # accuracy vs eps and training history, per dataset and model
CDN = re.compile(r"<script[^>]*\bsrc=['\"]?https?:|cdnjs\.cloudflare|cdn\.jsdelivr|unpkg\.com", re.IGNORECASE)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, report_data: Path) -> tuple[Path, Path]:
    """(the folder the report was built from, the report folder)."""
    root = tmp_path_factory.mktemp("published")
    profile = load_profile(write_outputs(root, report_data))
    outputs = build_report(profile, progress=False, cwd=root)
    return root, outputs["reports"]


def _pages(reports: Path) -> list[Path]:
    return sorted(p for p in reports.rglob("*.html") if "metrics" not in p.relative_to(reports).parts)


def test_pages_hold_no_warning_no_absolute_path_and_load_nothing_remote(published: tuple[Path, Path]) -> None:
    root, reports = published
    pages = _pages(reports)
    assert {p.name for p in pages} >= {"index.html", "leaderboard.html", "plots.html", "robustness_curves.html"}
    private = {str(REPOSITORY), str(root.resolve()), sys.prefix, str(Path.home())}
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "Warning" not in text, page
        assert 'data-mime-type="application/vnd.jupyter.stderr"' not in text, page
        assert not [path for path in private if path in text], page
        assert not CDN.search(text), f"{page} loads a script from the network: {CDN.search(text)}"


def test_method_names_are_html_not_latex(published: tuple[Path, Path]) -> None:
    _, reports = published
    pages = (
        "index.html",
        "leaderboard.html",
        *(f"notebooks/{n}.html" for n in ("robustness_curves", "two_moons", "image_examples")),
    )
    for name in pages:
        text = (reports / name).read_text(encoding="utf-8")
        assert "hKR<sub>α</sub><sup>m</sup>" in text or name.startswith("notebooks/t") or "image" in name, name
        assert "hKR_α^m" not in text and "$\\" not in text and "\\ell" not in text, name
    assert "hKR_α^m" in (reports / "leaderboard.md").read_text(encoding="utf-8")  # Markdown: the plain form
    assert "(params.yaml)" in (reports / "index.html").read_text(encoding="utf-8")  # the profile, not its absolute path


def test_plots_page_has_every_dvc_plot_and_the_inlined_libraries(published: tuple[Path, Path]) -> None:
    _, reports = published
    text = (reports / "plots.html").read_text(encoding="utf-8")
    assert sorted(inlined_scripts(text)) == ["vega-embed@6.29.0", "vega-lite@5.23.0", "vega@5.33.1"]
    ids = re.findall(r'<div id = "([^"]+)">', text)
    expected = [f"plots_{d}_{m}_csv" for d in DATASETS for m in MODELS]
    assert sorted(i for i in ids if i.startswith("plots_")) == sorted(expected)
    history = [f"metrics_train_history_{d}_{m}_seed0_history_json" for d in DATASETS for m in MODELS]
    assert sorted(i for i in ids if i.endswith("_history_json")) == sorted(history)
    assert "{plot_divs}" not in text and "<a href='plots.html'>" in (reports / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["index.html", "leaderboard.html", "notebooks/robustness_curves.html", "plots.html"])
def test_page_draws_offline_in_chromium(published: tuple[Path, Path], name: str, tmp_path: Path) -> None:
    _, reports = published
    shot = screenshot(reports / name, tmp_path / f"{Path(name).stem}.png")
    covered, colors = ink(shot)
    assert covered > 0.01 and colors > 8, f"{name} looks blank: {covered:.2%} of the pixels drawn, {colors} colours ({shot})"
    if name == "plots.html":
        dom = dump_dom(reports / name)
        assert f'data-vega-rendered="{PLOTS}"' in dom and "data-vega-failed" not in dom, dom[:400]
        assert len(re.findall(r'<svg[^>]*class="marks"', dom)) == PLOTS
