"""Shared fixtures: prepared moons and digits data, and a fixture profile's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_fixtures import PREPARE, write_outputs

from lipbench.data import prepare_dataset


@pytest.fixture(scope="session")
def report_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real moons and digits datasets, prepared once (small, no network)."""
    folder = tmp_path_factory.mktemp("report-data")
    for name, params in PREPARE.items():
        prepare_dataset(name, folder, params)
    return folder


@pytest.fixture
def fixture_params(tmp_path: Path, report_data: Path) -> Path:
    """A complete fixture profile (params file) under a fresh ``tmp_path``."""
    return write_outputs(tmp_path, report_data)
