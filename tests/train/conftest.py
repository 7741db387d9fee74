"""A tiny profile (moons, few epochs) with its data prepared under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lipbench.data import prepare_dataset


def write_profile(folder: Path, **train_overrides) -> Path:
    params = {
        "profile": "tiny",
        "root": ".",
        "params_file": "params.yaml",
        "paths": {
            "data": str(folder / "data"),
            "models": str(folder / "models"),
            "evaluation": str(folder / "evaluation"),
            "metrics": str(folder / "metrics"),
            "reports": str(folder / "reports"),
        },
        "datasets": ["moons"],
        "models": ["hkr", "adv"],
        "seeds": [0, 1],
        "prepare": {"mirror": "", "moons": {"n_samples": 400, "noise": 0.1, "seed": 0, "test_fraction": 0.25}},
        "train": {
            "device": "cpu",
            "moons": {
                "recipe": {"epochs": 3, "batch_size": 100, "learning_rate": 0.01} | train_overrides,
                "hkr": {"alpha": 50.0, "margin": 0.1},
                "adv": {"epsilon": 0.1, "steps": 2},
            },
        },
    }
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def prepared_moons(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    prepare_dataset("moons", folder / "data", {"n_samples": 400, "noise": 0.1, "seed": 0, "test_fraction": 0.25})
    return folder / "data"


@pytest.fixture
def make_profile():
    """``make_profile(folder, **recipe_overrides)`` writes a tiny profile's params.yaml."""
    return write_profile


@pytest.fixture
def tiny_profile(tmp_path, prepared_moons) -> Path:
    (tmp_path / "data").symlink_to(prepared_moons)
    return write_profile(tmp_path)
