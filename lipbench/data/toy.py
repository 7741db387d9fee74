"""Datasets generated or bundled by scikit-learn: no download.

* ``moons``: ``make_moons`` two-moons toy problem of the paper's Fig. 1/2 (binary, 2-D
  points, raw float coordinates).
* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes),
  pixels 0..16 scaled to [0, 1], shape (1, 8, 8).

Both are split once, stratified by class, from ``seed`` and ``test_fraction``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lipbench.data.base import (
    BaseDataset,
    DatasetInfo,
    Param,
    fraction_param,
    int_param,
    register_dataset,
    save_tensors,
)

__all__ = ["MoonsDataset", "DigitsDataset"]

_SEED = Param(0, (int,), lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)")
_DIGITS_COUNT = 1797


def _check_split_sizes(dataset: str, n_samples: int, test_fraction: float, num_classes: int) -> None:
    """Each side of a stratified split needs at least one point per class."""
    n_test = math.ceil(n_samples * test_fraction)  # scikit-learn's rounding
    n_train = n_samples - n_test
    if min(n_test, n_train) < num_classes:
        raise ValueError(
            f"parameters n_samples={n_samples} and test_fraction={test_fraction} of dataset {dataset!r} give "
            f"{n_train} train and {n_test} test points; each split needs at least {num_classes} "
            "(one per class): choose test_fraction closer to 0.5 or more samples"
        )


def _stratified_split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y, shuffle=True
    )
    return x_train, x_test, y_train, y_test


def _save_splits(stage: Path, x_train: Any, x_test: Any, y_train: Any, y_test: Any) -> dict[str, Any]:
    def as_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))

    return {
        "splits": {
            "train": save_tensors(stage / "train.pt", *as_tensors(x_train, y_train)),
            "test": save_tensors(stage / "test.pt", *as_tensors(x_test, y_test)),
        }
    }


@register_dataset("moons")
class MoonsDataset(BaseDataset):
    """Two interleaved half circles (``sklearn.datasets.make_moons``); labels 0 and 1.

    Params: ``n_samples`` (2000), ``noise`` (0.1, Gaussian std), ``seed`` (0; drives both the
    generation and the split), ``test_fraction`` (0.25).
    """

    info = DatasetInfo("moons", num_classes=2, input_shape=(2,), source="scikit-learn", needs_download=False, bounds=(-3.0, 3.0))
    param_specs = {
        "n_samples": int_param(2000, 4),
        "noise": Param(0.1, (int, float), lambda v: v >= 0, "a number >= 0"),
        "seed": _SEED,
        "test_fraction": fraction_param(0.25),
    }

    def validate_params(self, params: Any) -> dict[str, Any]:
        result = super().validate_params(params)
        _check_split_sizes(self.name, result["n_samples"], result["test_fraction"], 2)
        return result

    def _prepare(
        self, data_dir: Path, stage: Path, params: dict[str, Any], mirror: str | os.PathLike[str] | None
    ) -> dict[str, Any]:
        from sklearn.datasets import make_moons

        x, y = make_moons(n_samples=params["n_samples"], noise=params["noise"], random_state=params["seed"])
        low, high = self.info.bounds
        if x.min() < low or x.max() > high:
            raise ValueError(
                f"moons: noise={params['noise']} puts points outside the input box {self.info.bounds} that attacks "
                "and adversarial training stay in; use a smaller noise (the paper's figures use 0.1)"
            )
        return _save_splits(stage, *_stratified_split(x, y, params["test_fraction"], params["seed"]))


@register_dataset("digits")
class DigitsDataset(BaseDataset):
    """scikit-learn's bundled 8x8 digits (``load_digits``): values 0..16 divided by 16.

    Params: ``seed`` (0) and ``test_fraction`` (0.25) of the stratified split.
    """

    info = DatasetInfo("digits", num_classes=10, input_shape=(1, 8, 8), source="scikit-learn", needs_download=False)
    param_specs = {"seed": _SEED, "test_fraction": fraction_param(0.25)}

    def validate_params(self, params: Any) -> dict[str, Any]:
        result = super().validate_params(params)
        _check_split_sizes(self.name, _DIGITS_COUNT, result["test_fraction"], 10)
        return result

    def _prepare(
        self, data_dir: Path, stage: Path, params: dict[str, Any], mirror: str | os.PathLike[str] | None
    ) -> dict[str, Any]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
        y = bunch.target.astype(np.int64)
        return _save_splits(stage, *_stratified_split(x, y, params["test_fraction"], params["seed"]))
