"""The offline template of DVC's plots page: the pinned libraries inlined byte for byte, the
plot properties of dvc.yaml, and ``dvc plots show --html-template`` drawing offline (headless
Chromium, network off) the same specs as the report's ``plots.html``."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from browser import dump_dom

from lipbench.report.vega import (
    ASSETS,
    EPS_PLOT,
    HISTORY_PLOT,
    TEMPLATE,
    Plot,
    inlined_scripts,
    read_template,
    render_plots_page,
)

REPOSITORY = Path(__file__).resolve().parents[2]
QUICK = "reports/quick"
SPEC = re.compile(
    r'<div id = "(?P<id>[^"]+)">\s*<script type = "text/javascript">\s*var spec = (?P<spec>.*?);\s*vegaEmbed', re.DOTALL
)


def test_template_inlines_the_pinned_libraries_byte_for_byte() -> None:
    manifest = json.loads((ASSETS / "manifest.json").read_text())
    template = read_template()
    scripts = inlined_scripts(template)
    assert sorted(scripts) == sorted(f"{p['name']}@{p['version']}" for p in manifest["packages"])
    for package in manifest["packages"]:
        text = scripts[f"{package['name']}@{package['version']}"].encode("utf-8")
        assert hashlib.sha256(text).hexdigest() == package["sha256"] and len(text) == package["bytes"], package["name"]
        assert package["tarball_integrity"] in template
    assert template.count("{plot_divs}") == 1 and "{scripts}" not in template  # DVC adds its CDN tags only at {scripts}
    assert '<meta charset="utf-8">' in template and not re.search(r"<script[^>]*\bsrc=", template)
    licenses = (ASSETS / "LICENSES.txt").read_text()
    assert all(f"==> {label.rsplit('@', 1)[0]}@" in licenses for label in scripts) and "Redistribution" in licenses


def test_plot_properties_are_those_of_dvc_yaml() -> None:
    pipeline = yaml.safe_load((REPOSITORY / "dvc.yaml").read_text())
    eps, history = pipeline["plots"]
    ((path, props),) = eps.items()
    assert path.endswith("/${paths.reports}/plots") and props == EPS_PLOT
    ((path, props),) = history.items()
    assert path.endswith("/${paths.metrics}/train_history") and props == HISTORY_PLOT


@pytest.fixture(scope="module")
def dvc_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dvc plots show --html-template`` on the committed quick report's plot data, in a
    scratch DVC project holding dvc.yaml, params.yaml and that data (read only here)."""
    work = tmp_path_factory.mktemp("dvc-plots")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPOSITORY / name, work / name)
    shutil.copytree(REPOSITORY / QUICK / "plots", work / QUICK / "plots")
    for history in (REPOSITORY / QUICK / "metrics" / "train_history").rglob("history.json"):
        target = work / history.relative_to(REPOSITORY)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(history, target)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=work, env=env, check=True, capture_output=True)
    command = [*dvc, "plots", "show", "--html-template", str(TEMPLATE), "-o", "out"]
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return work / "out" / "index.html"


def _specs(page: str) -> dict[str, dict]:
    return {match["id"]: json.loads(match["spec"]) for match in SPEC.finditer(page)}


def test_dvc_page_is_offline_and_matches_the_report_renderer(dvc_page: Path) -> None:
    page = dvc_page.read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in page and len(inlined_scripts(page)) == 3
    specs = _specs(page)
    csvs = sorted((REPOSITORY / QUICK / "plots").rglob("*.csv"))
    assert len(specs) == len(csvs) + len(list((REPOSITORY / QUICK / "metrics" / "train_history").rglob("history.json")))
    csv_path = csvs[0].relative_to(REPOSITORY).as_posix()
    with csvs[0].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    ours = render_plots_page("t", [("s", [Plot(csv_path, csv_path, rows, EPS_PLOT)])])
    ((plot_id, spec),) = _specs(ours).items()
    assert specs[plot_id] == spec  # the report draws exactly what dvc plots show draws


def test_dvc_page_draws_offline_in_chromium(dvc_page: Path) -> None:
    dom = dump_dom(dvc_page)
    count = len(_specs(dvc_page.read_text(encoding="utf-8")))
    assert f'data-vega-rendered="{count}"' in dom and "data-vega-failed" not in dom, dom[:400]


def test_the_browser_check_sees_a_cdn_page_blank(tmp_path: Path) -> None:
    """DVC's own template loads the libraries from a CDN: with the network off nothing draws,
    so the checks above would catch a page that needs the network."""
    from dvc_render import render_html
    from dvc_render.vega import VegaRenderer

    rows = [{"eps": "0.1", "certified": "0.5"}, {"eps": "0.2", "certified": "0.4"}]
    renderer = VegaRenderer(rows, "cdn.csv", x="eps", y="certified")
    page = Path(render_html([renderer], tmp_path / "cdn" / "index.html"))
    assert "cdn.jsdelivr" in page.read_text()
    dom = dump_dom(page)
    assert "<svg" not in dom and "<canvas" not in dom


@pytest.mark.slow
def test_vendored_assets_rebuild_from_the_pinned_npm_tarballs() -> None:
    """``tools/vendor_vega.py --check``: npm's pinned tarballs give the committed assets (needs the npm registry)."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed (the vendored assets are committed; only re-vendoring needs it)")
    result = subprocess.run([sys.executable, "tools/vendor_vega.py", "--check"], cwd=REPOSITORY, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
