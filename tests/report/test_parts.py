"""Report building blocks: curves, names, tables, figure saving, input checks, the swap."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from lipbench.curves import accuracy_from_min_norms
from lipbench.nn.certificates import certified_accuracy
from lipbench.profiles import load_profile
from lipbench.report import plotting
from lipbench.report.build import _swap_in
from lipbench.report.images import transport_counterfactual
from lipbench.report.inputs import ReportInputError, check_inputs
from lipbench.report.labels import latex_name
from lipbench.report.tables import Column, Table, latex_escape
from lipbench.runs import Layout, RunKey


def test_curves_from_norms_and_radii() -> None:
    norms = np.array([0.0, 0.2, 0.5, np.inf])  # misclassified, two attacked, one never broken
    assert accuracy_from_min_norms(norms, np.array([0.0, 0.2, 0.3, 10.0])).tolist() == [0.75, 0.5, 0.5, 0.25]
    radius, correct = torch.tensor([0.1, 0.4, 0.9]), torch.tensor([True, True, False])
    certified = certified_accuracy(radius, correct, [0.0, 0.1, 0.5])
    assert list(certified.values()) == pytest.approx([2 / 3, 1 / 3, 0])


def test_paper_names_become_math() -> None:
    assert latex_name("hKR_α^m") == r"$\mathrm{hKR}_{\alpha}^{m}$"
    assert latex_name("GNP_hin^m") == r"$\mathrm{GNP}_{\mathrm{hin}}^{m}$"
    assert latex_name("1LIP_log") == r"$\mathrm{1LIP}_{\mathrm{log}}$"
    assert latex_name("Adv") == "Adv"


def test_transport_counterfactual_binary_and_multiclass() -> None:
    x, gradient = np.array([1.0, 2.0]), np.array([0.6, 0.8])
    moved, value = transport_counterfactual(x, np.array([0.5]), gradient)
    assert value == 0.5 and moved.tolist() == pytest.approx([0.4, 1.2])
    moved, value = transport_counterfactual(x, np.array([0.1, -0.3, 0.25]), gradient)
    assert value == 0.25 and moved.tolist() == pytest.approx([0.7, 1.6])  # the predicted (largest) logit


def test_table_formats() -> None:
    columns = [Column("Method", "method"), Column("C&W", "cw", "percent"), Column("Name", "name", "name")]
    table = Table("t", "A & B", columns, rows=[["x_1", [0.49, 0.51], "hKR_α^m"]], notes=["a note"])
    assert table.markdown().splitlines()[2:5] == ["| Method | C&W | Name |", "|---|---|---|", "| x_1 | 50.0 ± 1.0 | hKR_α^m |"]
    assert table.csv() == "method,cw,name\nx_1,0.5,hKR_α^m\n"  # one column spec: the same values in every format
    latex = table.latex()
    assert r"x\_1 & 50.0 $\pm$ 1.0 & $\mathrm{hKR}_{\alpha}^{m}$ \\" in latex
    assert r"\caption{A \& B}" in latex and latex.count(r"\midrule") == 1
    assert latex_escape(r"$\mathrm{KR}$") == r"$\mathrm{KR}$"


def _draw(values: np.ndarray):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot(values, label="curve")
    ax.imshow(np.outer(values, values), extent=(0, 1, 0, 1))
    ax.set_xlabel("x")
    ax.legend()
    return fig


def test_saved_figures_are_byte_identical(tmp_path: Path) -> None:
    plotting.apply_style()
    first = [p.read_bytes() for p in plotting.save_figure(_draw(np.linspace(0, 1, 5)), tmp_path / "a", "f")]
    second = [p.read_bytes() for p in plotting.save_figure(_draw(np.linspace(0, 1, 5)), tmp_path / "b", "f")]
    other = [p.read_bytes() for p in plotting.save_figure(_draw(np.linspace(0, 2, 5)), tmp_path / "c", "f")]
    assert first == second
    assert first[0] != other[0] and first[1] != other[1]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["f.png", "f.svg"]


def test_check_inputs_flags_missing_grid(fixture_params: Path) -> None:
    profile = load_profile(fixture_params)
    check_inputs(profile)  # complete fixture: no error
    path = Layout.of(profile).stage_arrays("certify", RunKey("moons", "kr", 0))
    arrays = dict(np.load(path))
    del arrays["grid_values"]
    np.savez(path, **arrays)
    with pytest.raises(ReportInputError, match="grid_values") as error:
        check_inputs(profile)
    assert "lipbench certify --params" in str(error.value) and "--dataset moons" in str(error.value)


def test_swap_keeps_metrics_and_hidden_and_drops_the_rest(tmp_path: Path) -> None:
    target, staging = tmp_path / "report", tmp_path / ".staging"
    for name in ("metrics", "other", "figures"):
        (target / name).mkdir(parents=True)
        (target / name / "file.txt").write_text(f"old {name}")
    (target / ".gitignore").write_text("x")
    (target / "stale.html").write_text("old")
    (staging / "figures").mkdir(parents=True)
    (staging / "figures" / "new.png").write_text("new")
    (staging / "index.html").write_text("new")
    _swap_in(staging, target)
    assert sorted(p.name for p in target.iterdir()) == [".gitignore", "figures", "index.html", "metrics"]
    assert [p.name for p in (target / "figures").iterdir()] == ["new.png"]
    assert (target / "metrics" / "file.txt").read_text() == "old metrics"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.old")]
