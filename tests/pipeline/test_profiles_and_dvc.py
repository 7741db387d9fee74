"""DVC pipeline: profiles are consistent, and `dvc repro` runs a tiny profile end to end."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lipbench.data import get_dataset
from lipbench.evaluate.settings import evaluation_settings
from lipbench.profiles import load_profile
from lipbench.runs import RunKey
from lipbench.train import config_from_profile

REPO = Path(__file__).resolve().parents[2]
PROFILES = {"quick": REPO / "params.yaml"} | {
    path.parent.name: path for path in sorted((REPO / "pipelines").glob("*/params.yaml"))
}


def test_the_profiles_exist():
    assert {"quick", "mnist", "paper"} <= set(PROFILES)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_dvc_yaml_is_the_shared_pipeline(profile):
    params = PROFILES[profile]
    assert (params.parent / "dvc.yaml").read_bytes() == (REPO / "dvc.yaml").read_bytes()
    loaded = yaml.safe_load(params.read_text())
    assert (params.parent / loaded["root"]).resolve() == REPO
    assert (REPO / loaded["params_file"]).resolve() == params.resolve()
    assert loaded["profile"] == profile


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_run_of_every_profile_resolves(profile):
    loaded = load_profile(PROFILES[profile])
    for dataset in loaded.datasets:
        get_dataset(dataset)
        settings = evaluation_settings(loaded, dataset)
        assert settings.headline_eps in settings.epsilons and settings.attacks
        for model in loaded.models:
            for seed in loaded.seeds:
                config = config_from_profile(loaded, RunKey(dataset, model, seed))
                assert config.recipe.epochs > 0


def _copy_repository(destination: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, tracked):
        source = REPO / name.decode()
        if source.is_file():
            target = destination / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for extra in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy2(REPO / extra, destination / extra)
    shutil.copytree(REPO / ".dvc", destination / ".dvc", dirs_exist_ok=True, ignore=shutil.ignore_patterns("tmp", "cache"))
    for folder in ("lipbench", "reports/notebooks"):
        shutil.copytree(REPO / folder, destination / folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))


def _outputs(root: Path) -> dict[str, tuple[str, int]]:
    """Every pipeline output (the quick profile's data and reports) with its content hash and mtime."""
    files = [path for folder in ("data/quick", "reports/quick") for path in (root / folder).rglob("*") if path.is_file()]
    assert files
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in files}


def test_dvc_repro_runs_a_tiny_profile_in_a_copy_of_the_repository(tmp_path):
    _copy_repository(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["models"] = ["hkr", "standard"]
    params["datasets"] = ["moons"]
    params["prepare"]["moons"]["n_samples"] = 300
    params["train"]["moons"]["recipe"]["epochs"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for folder in ("data", "reports"):
        shutil.rmtree(tmp_path / folder / "quick", ignore_errors=True)
    (tmp_path / "dvc.lock").unlink(missing_ok=True)
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc = [str(Path(sys.executable).parent / "dvc")]
    first = subprocess.run([*dvc, "repro"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    for method in ("hkr", "standard"):
        assert (tmp_path / f"data/quick/models/moons/{method}/seed0/weights.safetensors").is_file()
        assert (tmp_path / f"reports/quick/metrics/train/moons/{method}/seed0/metrics.json").is_file()
    for stage in ("certify", "attack", "verify"):
        assert (tmp_path / f"reports/quick/metrics/{stage}/moons.json").is_file()
    assert "hkr (seed 0)" in (tmp_path / "reports/quick/leaderboard.md").read_text()
    assert (tmp_path / "reports/quick/index.html").is_file()
    before = _outputs(tmp_path)
    second = subprocess.run([*dvc, "repro"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert second.returncode == 0 and "Data and pipelines are up to date" in second.stdout
    assert _outputs(tmp_path) == before  # nothing re-ran: every output is the same file, untouched
    metrics = subprocess.run([*dvc, "metrics", "show", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "test_accuracy" in metrics.stdout
