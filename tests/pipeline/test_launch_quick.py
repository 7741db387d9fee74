"""``lipbench launch --executor local --jobs 2`` runs the quick profile's training and
evaluation stages of one dataset (moons, shrunk: two models, a few epochs) in a clone of the
repository: the train stage fanned out (each model its own job, the stage then only copies
them back), ``dvc status`` clean afterwards, nothing run the second time, and what a plain
``dvc repro`` of the same targets produces in a second clone: every metric within
check-repro's tolerances and the same trained weights, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from lipbench.report.check_repro import compare_values

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TARGET = "dvc.yaml:verify@moons"


def _clone(destination: Path) -> None:
    """A clone of the repository (the code and pipelines under test copied over it: the job
    processes import lipbench from the checkout), the quick profile shrunk to moons, two models
    and 3 epochs."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(destination)], check=True)
    for folder in ("lipbench", "pipelines"):
        shutil.rmtree(destination / folder)
        shutil.copytree(REPO / folder, destination / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "dvc.yaml", destination / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(datasets=["moons"], models=["hkr", "standard"])
    params["prepare"]["moons"]["n_samples"] = 300
    params["train"]["moons"]["recipe"]["epochs"] = 3
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for folder in ("data/quick", "reports/quick"):
        shutil.rmtree(destination / folder, ignore_errors=True)
    (destination / "dvc.lock").unlink()


def _run(command: list[str], cwd: Path) -> str:
    # One thread per process in both clones: the same float rounding, so the same bytes.
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _metrics(root: Path) -> dict[str, object]:
    folder = root / "reports/quick/metrics"
    return {str(path.relative_to(folder)): json.loads(path.read_text()) for path in sorted(folder.rglob("*.json"))}


def test_launch_runs_moons_like_dvc_repro_and_leaves_dvc_status_clean(tmp_path: Path) -> None:
    launched, reproduced = tmp_path / "launch", tmp_path / "repro"
    _clone(launched)
    _clone(reproduced)
    out = _run([str(BIN / "lipbench"), "launch", TARGET, "--executor", "local", "--jobs", "2"], launched)
    # validate, prepare, a train part per model, train, certify, attack, verify
    assert "lipbench launch: 8 succeeded;" in out, out
    records = json.loads(next((launched / ".launch").glob("*/launch.json")).read_text())["records"]
    names = [record["name"] for record in records]
    assert names.index("train@moons/hkr/seed0") < names.index("train@moons") and "train@moons/standard/seed0" in names
    stage_log = Path(records[names.index("train@moons")]["log"]).read_text()
    assert "moons/hkr/seed0: reused" in stage_log and "moons/standard/seed0: reused" in stage_log, stage_log
    assert "Data and pipelines are up to date." in _run([str(BIN / "dvc"), "status", TARGET], launched)
    assert "nothing to run: 6 stages up to date" in _run([str(BIN / "lipbench"), "launch", TARGET, "--jobs", "2"], launched)
    _run([str(BIN / "dvc"), "repro", TARGET], reproduced)
    fresh, reference = _metrics(launched), _metrics(reproduced)
    assert sorted(fresh) == sorted(reference) and len(fresh) == 7  # 2 x (metrics, history) + 3 evaluations
    mismatches = [row for name in reference for row in compare_values(name, reference[name], fresh[name]) if not row.ok]
    assert not mismatches, mismatches
    lock, reference_lock = (yaml.safe_load((root / "dvc.lock").read_text())["stages"] for root in (launched, reproduced))
    assert sorted(lock) == sorted(reference_lock)
    assert lock["train@moons"]["outs"] == reference_lock["train@moons"]["outs"]  # data/quick/models/moons: md5 of every file
