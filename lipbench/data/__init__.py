"""Dataset registry: ``prepare`` once (fetch, verify, convert), then ``load`` train/test splits.

Built-in datasets: ``moons``, ``digits`` (scikit-learn, no download), ``mnist``,
``fashion_mnist``, ``cifar10``, ``cifar100``, ``celeba_eyeglasses`` and ``eurosat``
(torchvision on-disk formats).

Mirror: ``prepare_dataset(..., mirror=PATH)`` or, when ``mirror`` is None, the environment
variable ``LIPBENCH_DATA_MIRROR`` (the argument wins; ``mirror=""`` disables the mirror). The
mirror is a torchvision dataset root holding the original files; with a mirror set the
network is never used and the mirror is only read. Layout under ``data_dir``: see
:mod:`lipbench.data.base`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lipbench.data.base import DATASETS, BaseDataset, DatasetInfo, DatasetSplits, register_dataset, take_tensors
from lipbench.data.errors import (
    MIRROR_ENV_VAR,
    ChecksumError,
    DataError,
    DatasetNotPreparedError,
    DatasetUnavailableError,
)

__all__ = [
    "DATASETS",
    "MIRROR_ENV_VAR",
    "BaseDataset",
    "ChecksumError",
    "DataError",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "DatasetSplits",
    "DatasetUnavailableError",
    "get_dataset",
    "list_datasets",
    "load_dataset",
    "prepare_dataset",
    "register_dataset",
    "take_tensors",
]

# Built-in datasets register themselves when their module is imported.
_BUILTIN_MODULES = (
    "lipbench.data.toy",
    "lipbench.data.torchvision_sets",
    "lipbench.data.celeba",
    "lipbench.data.eurosat",
)
for _module in _BUILTIN_MODULES:
    importlib.import_module(_module)


def get_dataset(name: str) -> BaseDataset:
    """The registered dataset ``name`` (RegistryError listing the known names otherwise)."""
    return DATASETS.get(name)


def list_datasets() -> list[str]:
    """Sorted names of all registered datasets."""
    return DATASETS.names()


def prepare_dataset(
    name: str,
    data_dir: str | os.PathLike[str],
    params: Mapping[str, Any] | None = None,
    mirror: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Fetch, verify and convert ``name`` under ``data_dir``; return its manifest.

    ``mirror=None`` uses ``$LIPBENCH_DATA_MIRROR`` when set; an explicit ``mirror`` wins.
    """
    return get_dataset(name).prepare(Path(data_dir), params, mirror)


def load_dataset(name: str, data_dir: str | os.PathLike[str], params: Mapping[str, Any] | None = None) -> DatasetSplits:
    """Load the prepared splits of ``name`` (DatasetNotPreparedError if ``prepare`` has not run)."""
    return get_dataset(name).load(Path(data_dir), params)
