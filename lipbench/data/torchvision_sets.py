"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 from torchvision's on-disk formats.

File names, URLs and md5 checksums are read from torchvision's dataset classes (lazily, on
first use: importing torchvision costs over a second per process), so the raw folder is a
valid torchvision root (``MNIST/raw/*.gz``, ``FashionMNIST/raw/*.gz``,
``cifar-10-python.tar.gz`` and its extraction ``cifar-10-batches-py/``,
``cifar-100-python.tar.gz`` and ``cifar-100-python/``). Prepared splits are uint8 tensors
(``prepared/<name>/{train,test}.pt``); ``load`` returns float32 in [0, 1].
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lipbench.data.archives import (
    RemoteDataset,
    Resource,
    copy_tree_staged,
    extract_staged,
    verify_folder,
)
from lipbench.data.base import DatasetInfo, register_dataset, save_tensors
from lipbench.data.errors import ChecksumError

__all__ = ["IdxDataset", "Cifar10Dataset", "Cifar100Dataset", "read_idx_gz", "torchvision_dataset_class"]

#: Where each dataset comes from (documentation; tests check them against torchvision).
SOURCES = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
_CIFAR_FOLDER = "cifar-10-batches-py"  # torchvision.datasets.CIFAR10.base_folder
_CIFAR100_FOLDER = "cifar-100-python"  # torchvision.datasets.CIFAR100.base_folder


def torchvision_dataset_class(name: str) -> Any:
    """``torchvision.datasets.<name>``, imported on first use."""
    from torchvision import datasets

    return getattr(datasets, name)


def read_idx_gz(path: Path, ndim: int) -> np.ndarray:
    """Decode a gzip-compressed IDX file of unsigned bytes (the MNIST format)."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08 or data[3] != ndim:
        raise ValueError(f"{path} is not an IDX file of {ndim}-D unsigned bytes (header {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    payload = memoryview(data)[4 + 4 * ndim :]
    if len(payload) != math.prod(dims):
        raise ValueError(f"{path}: header announces {dims} = {math.prod(dims)} bytes, found {len(payload)}")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


class IdxDataset(RemoteDataset):
    """MNIST-format dataset: four IDX archives under ``<folder>/raw/``. Takes no params."""

    def __init__(self, name: str, folder: str, torchvision_class: str) -> None:
        self.info = DatasetInfo(name, 10, (1, 28, 28), source=SOURCES[name], needs_download=True)
        self.folder = folder
        self.torchvision_class = torchvision_class

    @cached_property
    def resources(self) -> tuple[Resource, ...]:
        tv_class = torchvision_dataset_class(self.torchvision_class)
        return tuple(
            Resource(f"{self.folder}/raw/{filename}", tuple(base + filename for base in tv_class.mirrors))
            for filename, _ in tv_class.resources
        )

    @cached_property
    def checksums(self) -> dict[str, str]:
        return dict(torchvision_dataset_class(self.torchvision_class).resources)

    def _prepare(
        self, data_dir: Path, stage: Path, params: dict[str, Any], mirror: str | os.PathLike[str] | None
    ) -> dict[str, Any]:
        mirror_path = self.resolve_mirror(data_dir, mirror)
        inputs = [self.fetch(resource, data_dir, mirror_path) for resource in self.resources]
        raw = data_dir / "raw" / self.folder / "raw"
        splits = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = read_idx_gz(raw / f"{prefix}-images-idx3-ubyte.gz", 3)
            labels = read_idx_gz(raw / f"{prefix}-labels-idx1-ubyte.gz", 1)
            if images.shape[0] != labels.shape[0] or images.shape[1:] != self.info.input_shape[1:]:
                raise ValueError(f"{self.name} {split}: images {images.shape} do not match labels {labels.shape}")
            if labels.size and labels.max() >= self.info.num_classes:
                raise ValueError(f"{self.name} {split}: label {labels.max()} >= {self.info.num_classes}")
            x = torch.from_numpy(images.copy()).unsqueeze(1)
            y = torch.from_numpy(labels.astype(np.int64))
            splits[split] = save_tensors(stage / f"{split}.pt", x, y)
        return {"inputs": inputs, "splits": splits}


register_dataset("mnist")(IdxDataset("mnist", "MNIST", "MNIST"))
register_dataset("fashion_mnist")(IdxDataset("fashion_mnist", "FashionMNIST", "FashionMNIST"))


@register_dataset("cifar10")
class Cifar10Dataset(RemoteDataset):
    """CIFAR-10 python version: ``cifar-10-python.tar.gz`` (or its extracted folder in the mirror).

    The archive's md5 and each extracted batch's md5 are checked (before any batch is
    unpickled). Takes no params. Subclasses set the class attributes below (CIFAR-100).
    """

    info = DatasetInfo("cifar10", 10, (3, 32, 32), source=SOURCES["cifar10"], needs_download=True)
    torchvision_class = "CIFAR10"
    folder = _CIFAR_FOLDER
    labels_key = "labels"  # the key of the label list in each pickled batch

    @cached_property
    def _tables(self) -> Any:
        return torchvision_dataset_class(self.torchvision_class)

    @cached_property
    def resources(self) -> tuple[Resource, ...]:
        return (Resource(self._tables.filename, (self._tables.url,)),)

    @cached_property
    def train_batches(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._tables.train_list)

    @cached_property
    def test_batches(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._tables.test_list)

    @cached_property
    def meta_file(self) -> str:
        return self._tables.meta["filename"]

    @cached_property
    def checksums(self) -> dict[str, str]:
        tables = self._tables
        return {
            tables.filename: tables.tgz_md5,
            **{name: md5 for name, md5 in tables.train_list + tables.test_list},
            tables.meta["filename"]: tables.meta["md5"],
        }

    def _verify_extracted(self, folder: Path) -> None:
        names = (*self.train_batches, *self.test_batches, self.meta_file)
        verify_folder(folder, {name: self.checksums[name] for name in names}, self.folder)

    def _extracted_ok(self, folder: Path) -> bool:
        if not folder.is_dir():
            return False
        try:
            self._verify_extracted(folder)
        except (ChecksumError, FileNotFoundError):
            return False
        return True

    def _mirror_has_only_folder(self, mirror: Path | None, archive: Resource) -> bool:
        """A mirror may hold torchvision's extracted folder instead of the archive."""
        return mirror is not None and not (mirror / archive.path).is_file() and (mirror / self.folder).is_dir()

    def _prepare(
        self, data_dir: Path, stage: Path, params: dict[str, Any], mirror: str | os.PathLike[str] | None
    ) -> dict[str, Any]:
        mirror_path = self.resolve_mirror(data_dir, mirror)
        raw = data_dir / "raw"
        folder = raw / self.folder
        archive = self.resources[0]
        inputs: list[dict[str, Any]] = []
        if self._extracted_ok(folder):
            pass  # a verified extraction from an earlier run
        elif self._mirror_has_only_folder(mirror_path, archive):
            copy_tree_staged(mirror_path / self.folder, folder, self._verify_extracted)  # type: ignore[operator]
        else:
            inputs.append(self.fetch(archive, data_dir, mirror_path))
            extract_staged(raw / archive.path, self.folder, raw, self._verify_extracted)
        inputs += [
            {"file": f"{self.folder}/{name}", "md5": self.checksums[name], "verified": True}
            for name in (*self.train_batches, *self.test_batches, self.meta_file)
        ]
        with open(folder / self.meta_file, "rb") as handle:
            label_names = list(pickle.load(handle, encoding="latin1")[self._tables.meta["key"]])  # md5-verified
        if len(label_names) != self.info.num_classes:
            raise ValueError(
                f"{self.name}: {folder / self.meta_file} lists {len(label_names)} classes, expected {self.info.num_classes}"
            )
        splits = {
            "train": save_tensors(stage / "train.pt", *self._read_batches(folder, self.train_batches)),
            "test": save_tensors(stage / "test.pt", *self._read_batches(folder, self.test_batches)),
        }
        return {"inputs": inputs, "class_names": label_names, "splits": splits}

    def _read_batches(self, folder: Path, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for name in names:
            with open(folder / name, "rb") as handle:
                batch = pickle.load(handle, encoding="latin1")  # md5-verified original file
            data = np.asarray(batch["data"], dtype=np.uint8)
            labels = np.asarray(batch[self.labels_key], dtype=np.int64)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
                raise ValueError(f"{folder / name}: data {data.shape} and labels {labels.shape} are not {self.name}")
            if labels.size and (labels.min() < 0 or labels.max() >= self.info.num_classes):
                raise ValueError(f"{folder / name}: labels outside 0..{self.info.num_classes - 1} are not {self.name}")
            xs.append(data.reshape(-1, 3, 32, 32))  # rows are 1024 red, 1024 green, 1024 blue bytes
            ys.append(labels)
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


@register_dataset("cifar100")
class Cifar100Dataset(Cifar10Dataset):
    """CIFAR-100 python version, 100 fine classes: ``cifar-100-python.tar.gz`` (or its extracted
    ``cifar-100-python/`` folder in the mirror), read exactly as CIFAR-10.

    The extracted ``train``, ``test`` and ``meta`` pickles are md5-checked against torchvision's
    ``CIFAR100`` tables before they are unpickled; labels are ``fine_labels`` and class names
    ``meta``'s ``fine_label_names``. Takes no params.
    """

    info = DatasetInfo("cifar100", 100, (3, 32, 32), source=SOURCES["cifar100"], needs_download=True)
    torchvision_class = "CIFAR100"
    folder = _CIFAR100_FOLDER
    labels_key = "fine_labels"
