"""How the HTML pages write names, paths and notebook outputs (no kernel, no browser)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from lipbench.report.index import portable_path, table_html
from lipbench.report.labels import html_name, latex_name
from lipbench.report.notebooks import clean_outputs, path_replacements
from lipbench.report.tables import Column, Table


@pytest.mark.parametrize(
    "paper, html",
    [
        ("hKR_α^m", "hKR<sub>α</sub><sup>m</sup>"),
        ("1LIP_log", "1LIP<sub>log</sub>"),
        ("GNP_hin^m", "GNP<sub>hin</sub><sup>m</sup>"),
        ("KR", "KR"),
        ("a<b & c", "a&lt;b &amp; c"),
    ],
)
def test_html_name_mirrors_latex_name(paper: str, html: str) -> None:
    assert html_name(paper) == html
    assert ("<sub>" in html or "<sup>" in html) == latex_name(paper).startswith("$")


def test_table_html_renders_names_and_numbers() -> None:
    columns = [Column("Method", "method", "name"), Column("Model", "model"), Column("Clean", "clean", "percent")]
    table = Table("t", "A <title>", columns, rows=[["hKR_α^m", "hkr", [0.5]]], notes=["n & m"])
    text = table_html(table, links="<p>x</p>")
    assert text.startswith("<h3>A &lt;title&gt;</h3><p>x</p><table>")
    assert "<td>hKR<sub>α</sub><sup>m</sup></td><td>hkr</td><td class='n'>50.0</td>" in text
    assert "<p class='note'>n &amp; m</p>" in text


def test_portable_path_never_shows_this_machine(tmp_path: Path) -> None:
    assert portable_path("pipelines/mnist/params.yaml") == "pipelines/mnist/params.yaml"
    assert portable_path(tmp_path / "a" / "params.yaml", tmp_path) == "a/params.yaml"
    assert portable_path(tmp_path / "params.yaml", tmp_path / "elsewhere") == "params.yaml"


def test_clean_outputs_drops_stderr_and_shortens_paths(tmp_path: Path) -> None:
    out, cwd = tmp_path / "repo" / "reports" / ".build", tmp_path / "repo"
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=f"{cwd}/m.py:3: UserWarning: careful\n"),
        nbformat.v4.new_output("stream", name="stdout", text=f"saved {out}/figures/a.png from {cwd}/data\n"),
        nbformat.v4.new_output("display_data", data={"text/plain": f"{cwd}/x", "image/png": "iVBOR"}),
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), cell])
    removed = clean_outputs(notebook, path_replacements(out, cwd))
    assert removed == ["./m.py:3: UserWarning: careful\n"]
    assert [o["output_type"] for o in cell.outputs] == ["stream", "display_data"]
    assert cell.outputs[0]["text"] == "saved <report>/figures/a.png from ./data\n"
    assert cell.outputs[1]["data"] == {"text/plain": "./x", "image/png": "iVBOR"}
