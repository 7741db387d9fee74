"""The explain stage on tiny trained digits models (hKR and unconstrained), through the CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from lipbench.arrays import AttackArrays, CertifyArrays
from lipbench.cli.main import main
from lipbench.data import prepare_dataset
from lipbench.evaluate.model_stages import load_model_and_points
from lipbench.evaluate.run import run_stage
from lipbench.evaluate.settings import evaluation_settings
from lipbench.explain.run import ExplainArrays, explain_model
from lipbench.explain.settings import explain_settings
from lipbench.profiles import ProfileError, load_profile
from lipbench.records import without_measurements
from lipbench.runs import Layout, RunKey
from lipbench.summaries import ExplainSummary, StageMetrics, read_summary
from lipbench.train import run_training

EXPLAIN = {
    "points": 12,
    "deletion_steps": 8,
    "fidelity_subsets": 16,
    "sensitivity_samples": 4,
    "counterfactual_grid": 8,
    "counterfactual_bisections": 20,
}
KEYS = [RunKey("digits", "hkr", 0), RunKey("digits", "standard", 0)]


def write_params(folder: Path, explain: dict) -> Path:
    params = {
        "profile": "tiny",
        "root": ".",
        "params_file": "params.yaml",
        "paths": {key: str(folder / key) for key in ("data", "models", "evaluation", "metrics", "reports")},
        "datasets": ["digits"],
        "models": ["hkr", "standard"],
        "seeds": [0],
        "prepare": {"mirror": "", "digits": {"seed": 0, "test_fraction": 0.25}},
        "train": {
            "device": "cpu",
            "digits": {
                "recipe": {"epochs": 3, "batch_size": 64, "learning_rate": 0.005},
                "hkr": {"alpha": 50.0, "margin": 0.3},
                "standard": {},
            },
        },
        "evaluate": {
            "device": "cpu",
            "batch_size": 64,
            "workers": 1,
            "digits": {
                "epsilons": [0.1, 0.3],
                "certify_points": 24,
                "attack_points": 16,
                "deepfool_points": 16,
                "attacks": ["fgm", "deepfool_l2"],
            },
        },
        "explain": {"digits": explain},
    }
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def attacked(tmp_path_factory) -> Path:
    """hkr and standard digits models, trained, certified and attacked (module-scoped)."""
    folder = tmp_path_factory.mktemp("explain")
    params = write_params(folder, EXPLAIN)
    profile = load_profile(params)
    prepare_dataset("digits", profile.path_of("data"), profile.prepare_params("digits"))
    for key in KEYS:
        run_training(profile, key, progress=False)
    for stage in ("certify", "attack"):
        run_stage(profile, stage, "digits", progress=False)
    return params


def test_the_cli_explains_every_model_and_its_summaries_round_trip(attacked, capsys):
    assert main(["explain", "--params", str(attacked), "--dataset", "digits"]) == 0
    assert capsys.readouterr().out.count("lipbench explain: digits/") == 2
    profile = load_profile(attacked)
    layout = Layout.of(profile)
    metrics = StageMetrics.read(layout.stage_metrics("explain", "digits"))
    assert list(metrics.summaries) == KEYS
    for key in KEYS:
        folder = layout.stage_dir("explain", key)
        assert sorted(p.name for p in folder.iterdir()) == ["explain.npz", "summary.json"]  # no temporary files left
        summary = read_summary(layout.stage_summary("explain", key), ExplainSummary)
        # the DVC output holds the record's summary without its measurements (bytes that follow the inputs)
        assert summary == without_measurements(metrics.summary(key)) and summary.seconds == 0 and not summary.environment
        assert metrics.summary(key).environment
        assert ExplainSummary.from_json(json.loads(json.dumps(summary.to_json()))) == summary
        assert summary.points == 12 and summary.margin == "top_minus_runner_up"
        assert summary.counterfactual_violations == []  # no counterfactual nearer than its certified radius
        assert summary.counterfactual_flipped == 12 and summary.counterfactual_over_radius >= 1 - 1e-4
        assert set(summary.alignment) == {"deepfool_l2"} and summary.alignment_points["deepfool_l2"] > 0
        assert -1 <= summary.alignment["deepfool_l2"] <= 1 and -1 <= summary.mu_fidelity <= 1
        assert 0 <= summary.sparseness <= 1 and 0 <= summary.complexity <= np.log(64) + 1e-9
        arrays = ExplainArrays.load(layout.stage_arrays("explain", key))
        assert arrays.saliency.shape == (12, 64) and arrays.deletion_curve.shape == (12, 9)
        assert np.allclose(arrays.deletion_curve[:, 0], 1.0) and np.allclose(arrays.insertion_curve[:, -1], 1.0)


def test_explaining_twice_gives_the_same_numbers(attacked):
    profile = load_profile(attacked)
    layout, key = Layout.of(profile), KEYS[0]
    model, x, _, _ = load_model_and_points(profile, key, evaluation_settings(profile, "digits"))
    settings = explain_settings(profile, "digits")
    certificates = CertifyArrays.load(layout.stage_arrays("certify", key))
    attacks = AttackArrays.load(layout.stage_arrays("attack", key))
    small = dataclasses.replace(settings, points=4)
    first, second = (explain_model(model, x, small, certificates, attacks) for _ in range(2))
    for field in dataclasses.fields(ExplainArrays):
        if field.name != "alignment":
            assert np.array_equal(getattr(first, field.name), getattr(second, field.name), equal_nan=True), field.name


def test_a_bad_dataset_name_is_one_clear_error(attacked, capsys):
    assert main(["explain", "--params", str(attacked), "--dataset", "digitz"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "digitz" in error and "not in this profile's datasets" in error and "digits" in error


def test_missing_attack_outputs_are_one_clear_error_naming_the_file_and_the_fix(attacked, tmp_path, capsys):
    profile = load_profile(attacked)
    attack_file = Layout.of(profile).stage_arrays("attack", KEYS[1])
    kept = tmp_path / "attack.npz"
    shutil.move(attack_file, kept)
    try:
        assert main(["explain", "--params", str(attacked), "--dataset", "digits"]) == 2
    finally:
        shutil.move(kept, attack_file)
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert str(attack_file) in error and "lipbench attack" in error and "--dataset digits" in error


def test_a_failed_write_leaves_the_previous_outputs_whole(attacked, monkeypatch):
    profile = load_profile(attacked)
    summary_path = Layout.of(profile).stage_summary("explain", KEYS[0])
    if not summary_path.is_file():
        assert main(["explain", "--params", str(attacked), "--dataset", "digits"]) == 0
    before = summary_path.read_bytes()
    write_text = Path.write_text

    def half_then_fail(self, text, *args, **kwargs):
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        main(["explain", "--params", str(attacked), "--dataset", "digits"])
    assert summary_path.read_bytes() == before
    assert not [p for p in summary_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_settings_are_checked_before_any_work(tmp_path):
    profile = load_profile(write_params(tmp_path, {"points": 12, "pixels": 3}))
    with pytest.raises(ProfileError, match="unknown keys pixels"):
        explain_settings(profile, "digits")
    profile = load_profile(write_params(tmp_path, {"points": 100}))
    with pytest.raises(ProfileError, match="certify_points"):
        explain_settings(profile, "digits")
    profile = load_profile(write_params(tmp_path, {"fidelity_subset_fraction": 1.5}))
    with pytest.raises(ProfileError, match="fidelity_subset_fraction"):
        explain_settings(profile, "digits")
    defaults = explain_settings(load_profile(write_params(tmp_path, {"points": 24})), "digits")
    assert defaults.deletion_steps == 32 and defaults.subset_size(64) == 13 and defaults.batch_size == 64
