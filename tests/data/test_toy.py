"""moons and digits: prepare, load, determinism, parameters and atomic preparation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import lipbench.data.base as base
from lipbench.data import DatasetNotPreparedError, load_dataset, prepare_dataset, take_tensors
from lipbench.io import read_json


def _tensors(name: str, data_dir: Path, params: dict | None = None):
    prepare_dataset(name, data_dir, params)
    splits = load_dataset(name, data_dir, params)
    return take_tensors(splits.train, None), take_tensors(splits.test, None)


def test_moons_prepare_and_load(tmp_path: Path) -> None:
    manifest = prepare_dataset("moons", tmp_path, {"n_samples": 400})
    splits = load_dataset("moons", tmp_path, {"n_samples": 400})
    (x_train, y_train), (x_test, y_test) = take_tensors(splits.train, None), take_tensors(splits.test, None)
    assert x_train.shape == (300, 2) and x_test.shape == (100, 2)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert set(y_train.tolist()) == {0, 1} and torch.bincount(y_test).tolist() == [50, 50]
    assert -2.0 < x_train[:, 0].min() and x_train[:, 0].max() < 3.0  # the two half circles
    assert splits.info.binary and splits.train.tensors[0].shape == (300, 2)
    assert manifest["splits"]["train"]["count"] == 300 and manifest["params"]["noise"] == 0.1
    assert read_json(tmp_path / "prepared" / "moons" / "manifest.json") == manifest


def test_digits_prepare_and_load(tmp_path: Path) -> None:
    (x_train, y_train), (x_test, y_test) = _tensors("digits", tmp_path)
    assert x_train.shape[1:] == (1, 8, 8) and x_train.shape[0] + x_test.shape[0] == 1797
    assert x_test.shape[0] == math.ceil(1797 * 0.25)
    assert x_train.min() == 0.0 and x_train.max() == 1.0  # 0..16 scaled by 1/16
    assert torch.all(torch.isin(x_train * 16, torch.arange(17.0)))
    assert sorted(set(y_train.tolist())) == list(range(10)) and sorted(set(y_test.tolist())) == list(range(10))


@pytest.mark.parametrize("name, params", [("moons", {"n_samples": 200}), ("digits", {})])
def test_seed_determines_the_data(tmp_path: Path, name: str, params: dict) -> None:
    first = _tensors(name, tmp_path / "a", {**params, "seed": 3})
    again = _tensors(name, tmp_path / "b", {**params, "seed": 3})
    other = _tensors(name, tmp_path / "c", {**params, "seed": 4})
    for (xa, ya), (xb, yb) in zip(first, again):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(first[0][0], other[0][0])
    assert (tmp_path / "a/prepared" / name / "train.pt").read_bytes() == (
        tmp_path / "b/prepared" / name / "train.pt"
    ).read_bytes()


@pytest.mark.parametrize(
    "name, params, fragment",
    [
        ("moons", {"n_sample": 10}, "unknown parameter"),
        ("moons", {"n_samples": -5}, "'n_samples'.*integer >= 4"),
        ("moons", {"n_samples": 2.5}, "'n_samples'"),
        ("moons", {"noise": -0.1}, "'noise'.*>= 0"),
        ("moons", {"seed": True}, "'seed'"),
        ("moons", {"test_fraction": 0.0}, "'test_fraction'.*strictly between 0 and 1"),
        ("moons", {"test_fraction": 1.5}, "'test_fraction'"),
        ("moons", {"n_samples": 10, "test_fraction": 0.05}, "test_fraction"),
        ("digits", {"test_fraction": 1}, "'test_fraction'"),
        ("digits", {"test_fraction": 0.001}, "at least 10"),
        ("digits", {"n_samples": 100}, "allowed parameters: seed"),
    ],
)
def test_bad_params_are_rejected_before_any_work(tmp_path: Path, name: str, params: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        prepare_dataset(name, tmp_path / "data", params)
    assert not (tmp_path / "data").exists()


def test_load_before_prepare_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotPreparedError, match=r"'moons'.*lipbench prepare --dataset moons"):
        load_dataset("moons", tmp_path)


def test_load_with_other_params_than_prepared(tmp_path: Path) -> None:
    prepare_dataset("moons", tmp_path, {"seed": 1})
    with pytest.raises(DatasetNotPreparedError, match="prepared with params"):
        load_dataset("moons", tmp_path, {"seed": 2})


def test_prepare_again_is_a_no_op_and_new_params_replace(tmp_path: Path) -> None:
    first = prepare_dataset("moons", tmp_path, {"n_samples": 100})
    train_file = tmp_path / "prepared" / "moons" / "train.pt"
    stamp = train_file.stat().st_mtime_ns
    assert prepare_dataset("moons", tmp_path, {"n_samples": 100}) == first
    assert train_file.stat().st_mtime_ns == stamp
    second = prepare_dataset("moons", tmp_path, {"n_samples": 200})
    assert second["splits"]["train"]["count"] == 150
    assert len(load_dataset("moons", tmp_path, {"n_samples": 200}).train) == 150


def test_failure_before_the_manifest_leaves_nothing_and_keeps_old_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fakes
) -> None:
    prepare_dataset("moons", tmp_path, {"seed": 1})
    before = fakes.snapshot(tmp_path)

    def broken(path, payload):
        raise OSError("disk full")

    monkeypatch.setattr(base, "write_json_atomic", broken)
    with pytest.raises(OSError, match="disk full"):
        prepare_dataset("moons", tmp_path, {"seed": 2})
    assert fakes.snapshot(tmp_path) == before and not fakes.leftovers(tmp_path)
    assert len(load_dataset("moons", tmp_path, {"seed": 1}).test) == 500

    with pytest.raises(OSError, match="disk full"):
        prepare_dataset("digits", tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
