"""The certify stage records which certificate each point used (whole map, per logit,
pairwise), and the verify stage fails when a recorded pairwise bound is beaten."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lipbench.arrays import ArraysError, CertifyArrays
from lipbench.data import prepare_dataset
from lipbench.evaluate import model_stages as stages
from lipbench.evaluate.run import run_stage
from lipbench.evaluate.settings import evaluation_settings
from lipbench.nn.certificates import CERTIFICATE_KINDS, certified_radius
from lipbench.profiles import load_profile
from lipbench.runs import Layout, RunKey
from lipbench.summaries import CertifySummary, read_summary
from lipbench.train import run_training

KEY = RunKey("digits", "hkr", 0)


@pytest.fixture(scope="module")
def certified(tmp_path_factory) -> Path:
    """A tiny profile with one hkr digits model, trained and certified (module-scoped)."""
    folder = tmp_path_factory.mktemp("pairwise")
    params = {
        "profile": "tiny",
        "root": ".",
        "params_file": "params.yaml",
        "paths": {key: str(folder / key) for key in ("data", "models", "evaluation", "metrics", "reports")},
        "datasets": ["digits"],
        "models": ["hkr"],
        "seeds": [0],
        "prepare": {"mirror": "", "digits": {"seed": 0, "test_fraction": 0.25}},
        "train": {
            "device": "cpu",
            "digits": {"recipe": {"epochs": 4, "batch_size": 64, "learning_rate": 0.005}, "hkr": {"alpha": 50.0, "margin": 0.3}},
        },
        "evaluate": {
            "device": "cpu",
            "batch_size": 64,
            "workers": 1,
            "verify": {"ascent_steps": 3, "audit_points": 40, "audit_steps": 10, "layer_power_iterations": 10},
            "digits": {
                "epsilons": [0.1, 0.3],
                "certify_points": 120,
                "attack_points": 40,
                "deepfool_points": 40,
                "attacks": ["fgm", "deepfool_l2"],
                "attack_options": {},
            },
        },
    }
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    profile = load_profile(path)
    prepare_dataset("digits", profile.path_of("data"), profile.prepare_params("digits"))
    run_training(profile, KEY, progress=False)
    run_stage(profile, "certify", "digits", progress=False)
    return path


def test_the_certify_stage_records_each_points_certificate_and_the_counts(certified):
    profile = load_profile(certified)
    layout = Layout.of(profile)
    arrays = CertifyArrays.load(layout.stage_arrays("certify", KEY))
    summary = read_summary(layout.stage_summary("certify", KEY), CertifySummary)
    assert arrays.certificate.dtype == np.int8 and arrays.certificate.shape == arrays.radius.shape
    counts = {name: int((arrays.certificate == code).sum()) for code, name in enumerate(CERTIFICATE_KINDS)}
    assert summary.certificate_counts == counts and sum(counts.values()) == summary.points == 120
    assert counts["pairwise"] > 0  # a row-normalised last layer: the runner-up's row is never antipodal
    upper = summary.lipschitz_upper_bound
    assert upper.prefix is not None and np.shape(upper.pairwise) == (10, 10)
    # the recorded radius is the largest certificate, at least the two scalar ones
    logits = torch.from_numpy(arrays.logits)
    scalar = certified_radius(logits, upper.whole_map, upper.max_per_logit).double().numpy()
    np.testing.assert_array_equal(arrays.radius, certified_radius(logits, upper.whole_map, upper.max_per_logit, upper.pairwise))
    assert (arrays.radius >= scalar).all() and (arrays.radius > scalar)[arrays.certificate == 2].all()
    # the per-dataset metrics carry the counts too (small: a 10x10 matrix)
    metrics = json.loads(layout.stage_metrics("certify", "digits").read_text())["models"]["hkr"]["seed0"]
    assert metrics["certificate_counts"] == counts and len(metrics["lipschitz_upper_bound"]["pairwise"]) == 10


def test_an_arrays_file_without_certificate_kinds_is_refused(certified, tmp_path):
    arrays = dict(np.load(Layout.of(load_profile(certified)).stage_arrays("certify", KEY)))
    del arrays["certificate"]
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(ArraysError, match="lacks the array 'certificate'"):
        CertifyArrays.load(tmp_path / "old.npz")


def test_verify_passes_then_fails_naming_the_pair_when_the_recorded_pairwise_bounds_are_scaled_down(certified):
    profile = load_profile(certified)
    layout = Layout.of(profile)
    run_stage(profile, "attack", "digits", progress=False)
    settings = evaluation_settings(profile, "digits")
    sound = stages.verify(profile, KEY, settings, "fingerprint", False)
    assert sound.verified, sound.failures
    check = sound.certificate_audit["pairwise_bounds"]
    assert check["pairs"] == 40 * 9 and check["beaten"] == 0 and 0 < check["max_rate_over_bound"] <= 1 + 1e-4
    path = layout.stage_summary("certify", KEY)
    original = path.read_text()
    try:
        data = json.loads(original)
        bound = data["lipschitz_upper_bound"]
        bound["pairwise"] = (np.asarray(bound["pairwise"]) * 0.5).tolist()
        path.write_text(json.dumps(data))
        beaten = stages.verify(profile, KEY, settings, "fingerprint", False)
    finally:
        path.write_text(original)
    assert not beaten.verified and beaten.certificate_audit["pairwise_bounds"]["beaten"] > 0
    message = next(failure for failure in beaten.failures if "pairwise" in failure)
    assert message.startswith("tiny:digits/hkr/seed0: the logit difference f_") and "(pair (" in message
