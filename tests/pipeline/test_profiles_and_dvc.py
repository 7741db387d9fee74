"""DVC pipeline: profiles are consistent, and `dvc repro` runs a tiny profile end to end."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lipbench.data import get_dataset
from lipbench.evaluate.settings import evaluation_settings
from lipbench.methods import list_methods
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
    (shown,) = (result["data"] for result in json.loads(metrics.stdout).values())  # one revision: the workspace
    # DVC metrics: the scalars a user compares (one file per profile), nothing else
    assert sorted(shown) == [f"reports/{profile}/scores.json" for profile in ("mnist", "paper", "quick")]
    assert set(shown["reports/quick/scores.json"]["data"]["moons"]["hkr"]) == {
        "clean", "certified", "robust", "autoattack", "lipschitz_upper", "lipschitz_lower", "train_seconds",
    }  # fmt: skip
    _a_clone_with_the_cache_reruns_nothing(tmp_path, dvc, env)


def _a_clone_with_the_cache_reruns_nothing(origin: Path, dvc: list[str], env: dict[str, str]) -> None:
    """Commit the run, clone it, copy DVC's cache: ``dvc repro`` restores every stage from the
    run-cache (no stage runs) and leaves ``git status`` clean."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], cwd=origin, check=True, capture_output=True)
    subprocess.run([*git, "commit", "-q", "-m", "run"], cwd=origin, check=True, capture_output=True)
    clone = origin.parent / f"{origin.name}-clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    shutil.copytree(origin / ".dvc" / "cache", clone / ".dvc" / "cache")
    restored = subprocess.run([*dvc, "repro"], cwd=clone, env=env, capture_output=True, text=True)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "Running stage" not in restored.stdout, restored.stdout
    assert (clone / "data/quick/models/moons/hkr/seed0/weights.safetensors").is_file()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert status.stdout == "", status.stdout


def test_a_typo_in_the_models_is_lipbench_s_error_before_dvc_s(tmp_path):
    """``validate`` runs first: an unknown model is named with the known methods, before DVC
    reaches the training stage it would stop at with "Parameters ... are missing"."""
    _copy_repository(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["models"] = ["hrk", "hkr"]
    params["datasets"] = ["moons"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "dvc.lock").unlink(missing_ok=True)
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    run = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "repro"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0
    known = ", ".join(list_methods())
    assert f"lipbench validate: error: unknown method 'hrk'; known methods: {known}" in output
    assert "are missing" not in output and "Running stage 'prepare" not in output


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.update(models=["hrk", "hkr"]), "unknown method 'hrk'; known methods: adv"),
        (lambda p: p["train"]["moons"].pop("kr"), "train.moons.kr is missing; add `kr: {}` under train.moons"),
        (lambda p: p["train"]["digits"]["hkr"].update(alpha="big"), "parameter alpha must be a number"),
        (lambda p: p["evaluate"]["digits"].update(attacks=["fgsm"]), "unknown attack 'fgsm'"),
        (lambda p: p["prepare"]["moons"].update(test_fraction=2.0), "test_fraction"),
    ],
)
def test_validate_names_the_first_problem_of_a_profile(tmp_path, capsys, change, message):
    from lipbench.cli.main import main

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    change(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "validated.json"
    assert main(["validate", "--params", str(path), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert main(["validate", "--params", str(REPO / "params.yaml"), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"profile": "quick", "valid": True}
