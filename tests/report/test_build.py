"""The whole report built from small fixture outputs: contents, reproducibility, atomicity."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from report_fixtures import ATTACKS, MODELS, write_outputs

from lipbench.cli.main import main
from lipbench.profiles import Profile, load_profile
from lipbench.report.build import build_report
from lipbench.report.inputs import ReportInputError
from lipbench.report.notebooks import NotebookError
from lipbench.runs import Layout, RunKey

FIGURES = [
    "moons_level_sets",
    "moons_histograms",
    "robustness_moons",
    "robustness_digits",
    "deepfool_moons",
    "deepfool_digits",
    "adversarial_digits",
    "saliency_digits",
    "explain_moons",
    "explain_digits",
]
TABLES = ["robustness_moons", "robustness_digits", "cost", "lipschitz", "explain_moons", "explain_digits"]


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, report_data: Path) -> tuple[Profile, dict]:
    root = tmp_path_factory.mktemp("built")
    profile = load_profile(write_outputs(root, report_data))
    external = profile.path_of("metrics") / "external"  # external leaderboard entries live here
    external.mkdir(parents=True, exist_ok=True)
    (external / "notes.txt").write_text("kept\n")
    return profile, build_report(profile, progress=False, cwd=root)


def test_report_has_every_figure_table_and_page(built: tuple[Profile, dict]) -> None:
    profile, outputs = built
    reports = profile.path_of("reports")
    for stem in FIGURES:
        assert (reports / "figures" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (reports / "figures" / f"{stem}.svg").read_bytes()[:2000]
    assert not (reports / "figures" / "adversarial_moons.png").exists()  # moons are points, not images
    assert sorted(p.stem for p in outputs["figures"]) == sorted(s for s in FIGURES for _ in range(2))
    for name in TABLES:
        for suffix in ("md", "csv", "tex"):
            assert (reports / "tables" / f"{name}.{suffix}").stat().st_size > 100
    for dataset in ("moons", "digits"):
        assert sorted(p.name for p in (reports / "plots" / dataset).iterdir()) == sorted(f"{m}.csv" for m in MODELS)
    assert sorted(p.name for p in (reports / "notebooks").iterdir()) == [
        "explanations.html",
        "image_examples.html",
        "robustness_curves.html",
        "two_moons.html",
    ]
    assert "Skipped moons" in (reports / "notebooks" / "image_examples.html").read_text()
    board = json.loads((reports / "leaderboard.json").read_text())
    assert sorted(board["datasets"]) == ["digits", "moons"] and len(board["datasets"]["digits"]) == len(MODELS)
    index = (reports / "index.html").read_text()
    links = set(re.findall(r"href='([^']+)'", index))
    generated = {p for p in snapshot(reports) if not p.startswith("metrics/") and p != "index.html"}
    assert generated <= links, generated - links
    assert "abc123" in index and "2.14.1" in index  # git commit and versions of the runs
    assert (profile.path_of("metrics") / "external" / "notes.txt").read_text() == "kept\n"


def test_tables_carry_the_stage_numbers(built: tuple[Profile, dict]) -> None:
    profile, _ = built
    reports, metrics = profile.path_of("reports"), profile.path_of("metrics")
    attack = json.loads((metrics / "attack" / "digits.json").read_text())["models"]["hkr"]["seed0"]
    certify = json.loads((metrics / "certify" / "digits.json").read_text())["models"]["hkr"]["seed0"]
    rows = list(csv.DictReader((reports / "tables" / "robustness_digits.csv").open()))
    assert [(r["model"], float(r["eps"])) for r in rows] == [(m, e) for m in MODELS for e in (0.25, 0.5)]
    hkr = [r for r in rows if r["model"] == "hkr"][1]
    # clean, each attack, all attacks and certified: the attack points; then the certify set and the test set
    assert float(hkr["clean"]) == pytest.approx(attack["clean_accuracy"], abs=1e-6)
    assert float(hkr["combined"]) == pytest.approx(attack["robust_accuracy"][1], abs=1e-6)
    assert float(hkr["certified"]) == pytest.approx(attack["certified_accuracy"][1], abs=1e-6)
    assert float(hkr["certified_certify_points"]) == pytest.approx(certify["certified_accuracy"][1], abs=1e-6)
    assert float(hkr["pgd_l2"]) == pytest.approx(attack["per_attack_robust_accuracy"]["pgd_l2"][1], abs=1e-6)
    for row in rows:
        attacks = [float(row[a]) for a in ATTACKS]
        assert float(row["certified"]) <= float(row["combined"]) <= min(attacks) <= max(attacks) <= float(row["clean"])
    markdown = (reports / "tables" / "robustness_digits.md").read_text()
    assert "the same first 20 test points" in markdown and "Certified (40 pts)" in markdown
    plot = list(csv.reader((reports / "plots" / "digits" / "hkr.csv").open()))
    assert plot[0] == ["eps", "certified", "combined", *ATTACKS]
    assert float(plot[2][2]) == pytest.approx(attack["robust_accuracy"][1], abs=1e-6)
    tex = (reports / "tables" / "robustness_digits.tex").read_text()
    assert "\\begin{tabular}" in tex and "C\\&W" in tex and "$\\mathrm{hKR}_{\\alpha}^{m}$" in tex
    lipschitz = list(csv.DictReader((reports / "tables" / "lipschitz.csv").open()))
    assert {r["status"] for r in lipschitz} == {"verified"} and len(lipschitz) == 2 * len(MODELS)


def test_rebuild_is_byte_identical_and_drops_stale_files(built: tuple[Profile, dict]) -> None:
    profile, _ = built
    reports = profile.path_of("reports")
    before = snapshot(reports)
    (reports / "figures" / "stale_old_figure.png").write_bytes(b"old")
    (reports / "leftover.txt").write_text("old")
    (reports / ".gitignore").write_text("/figures\n")
    build_report(profile, progress=False, cwd=reports.parent)
    after = snapshot(reports)
    assert not (reports / "figures" / "stale_old_figure.png").exists() and not (reports / "leftover.txt").exists()
    assert after.pop(".gitignore")  # hidden entries (DVC's .gitignore) are kept
    assert after == before  # figures, tables, notebooks, index: byte-identical; metrics/ and external/ untouched
    assert not [p for p in reports.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_missing_input_names_file_and_stage_and_keeps_report(built: tuple[Profile, dict], tmp_path: Path) -> None:
    profile, _ = built
    reports = profile.path_of("reports")
    before = snapshot(reports)
    missing = Layout.of(profile).stage_arrays("attack", RunKey("digits", "hkr", 0))
    shutil.move(missing, tmp_path / "attack.npz")
    try:
        with pytest.raises(ReportInputError) as error:
            build_report(profile, progress=False)
    finally:
        shutil.move(tmp_path / "attack.npz", missing)
    message = str(error.value)
    assert str(missing) in message and "lipbench attack --params" in message and "--dataset digits" in message
    assert "dvc repro" in message
    assert snapshot(reports) == before


def test_failing_notebook_keeps_previous_report(built: tuple[Profile, dict], tmp_path: Path) -> None:
    profile, _ = built
    reports = profile.path_of("reports")
    before = snapshot(reports)
    (tmp_path / "broken.py").write_text("# %%\nraise RuntimeError('boom in the notebook')\n")
    with pytest.raises(NotebookError, match="broken.py") as error:
        build_report(profile, progress=False, notebooks_dir=tmp_path)
    assert "boom in the notebook" in str(error.value)
    assert snapshot(reports) == before
    assert not [p for p in reports.parent.iterdir() if p.name.startswith(".")]


def test_cli_reports_missing_training_metrics(tmp_path: Path, report_data: Path, capsys: pytest.CaptureFixture) -> None:
    params = write_outputs(tmp_path, report_data, models=["hkr", "kr"])
    profile = load_profile(params)
    Layout.of(profile).train_summary(RunKey("moons", "kr", 0)).unlink()
    assert main(["report", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "lipbench report: error:" in err and "lipbench train --params" in err and "--model kr --seed 0`" in err
    assert not profile.path_of("reports").joinpath("index.html").exists()
