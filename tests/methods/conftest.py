"""Shared by the ARMOR_D tests: digits prepared once per module and the tiny digits profile."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lipbench.data import prepare_dataset


@pytest.fixture(scope="module")
def prepared_digits(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("digits")
    prepare_dataset("digits", folder / "data", {"seed": 0, "test_fraction": 0.25})
    return folder / "data"


def write_digits_profile(folder: Path, data: Path, methods: dict[str, dict]) -> Path:
    """The tiny digits profile (2 epochs) training ``methods`` (method -> its parameters)."""
    params = {
        "profile": "tiny",
        "root": ".",
        "params_file": "params.yaml",
        "paths": {name: str(folder / name) for name in ("models", "evaluation", "metrics", "reports")} | {"data": str(data)},
        "datasets": ["digits"],
        "models": list(methods),
        "seeds": [0],
        "prepare": {"mirror": "", "digits": {"seed": 0, "test_fraction": 0.25}},
        "train": {
            "device": "cpu",
            "digits": {"recipe": {"epochs": 2, "batch_size": 256, "learning_rate": 0.01}, **methods},
        },
    }
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def digits_profile() -> Callable[[Path, Path, dict[str, dict]], Path]:
    return write_digits_profile
