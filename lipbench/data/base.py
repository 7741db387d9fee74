"""Core types of :mod:`lipbench.data`: dataset info, splits, parameters, the registry and
the prepare/load protocol shared by every dataset.

On-disk layout under ``data_dir``::

    raw/                      torchvision dataset root: original archives (+ extracted folders)
    prepared/<name>/          what ``load`` reads (tensors or an index of image files)
    prepared/<name>/manifest.json   written last: the completion marker

``prepare`` builds ``prepared/<name>`` in a hidden ``.partial`` folder beside it and renames
it into place only once the manifest is written, so after any error nothing half-made stays.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from lipbench.data.errors import DatasetNotPreparedError
from lipbench.io import read_json, write_json_atomic
from lipbench.registry import Registry

__all__ = [
    "DATASETS",
    "BaseDataset",
    "DatasetInfo",
    "DatasetSplits",
    "Param",
    "register_dataset",
    "take_tensors",
    "validate_params",
    "prepared_dir",
    "MANIFEST_NAME",
]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset (no I/O): enough to build a model for it."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    source: str
    needs_download: bool
    #: The input box (low, high) every coordinate lies in: (0, 1) for images. Attacks and
    #: adversarial training stay inside it.
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        shape = tuple(self.input_shape)
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {self.input_shape!r}")
        object.__setattr__(self, "input_shape", shape)
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {self.num_classes!r}")
        low, high = (float(b) for b in self.bounds)
        if not low < high:
            raise ValueError(f"bounds must be (low, high) with low < high, got {self.bounds!r}")
        object.__setattr__(self, "bounds", (low, high))

    @property
    def binary(self) -> bool:
        """True for two-class problems (labels 0 and 1)."""
        return self.num_classes == 2

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["input_shape"] = list(self.input_shape)
        payload["bounds"] = list(self.bounds)
        return payload


@dataclass(frozen=True)
class DatasetSplits:
    """Train and test splits yielding ``(x float32, y int64)``; ``manifest`` is the prepare record."""

    info: DatasetInfo
    train: Dataset
    test: Dataset
    manifest: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Param:
    """One dataset parameter: default, accepted Python types, check and its description."""

    default: Any
    types: tuple[type, ...]
    check: Callable[[Any], bool]
    allowed: str


def int_param(default: int, minimum: int) -> Param:
    return Param(default, (int,), lambda v: v >= minimum, f"an integer >= {minimum}")


def fraction_param(default: float) -> Param:
    return Param(default, (int, float), lambda v: 0.0 < v < 1.0, "a number strictly between 0 and 1")


def validate_params(dataset: str, specs: Mapping[str, Param], params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``params`` completed with defaults; ValueError on unknown keys or bad values."""
    params = dict(params or {})

    def describe() -> str:
        if not specs:
            return f"dataset {dataset!r} takes no parameters"
        return "allowed parameters: " + "; ".join(
            f"{key} ({spec.allowed}, default {spec.default!r})" for key, spec in specs.items()
        )

    unknown = sorted(set(params) - set(specs))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(map(repr, unknown))} for dataset {dataset!r}; {describe()}")
    result: dict[str, Any] = {}
    for key, spec in specs.items():
        value = params.get(key, spec.default)
        bad_type = isinstance(value, bool) and bool not in spec.types
        if bad_type or not isinstance(value, spec.types) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"parameter {key!r} of dataset {dataset!r} must be {spec.allowed}, got {value!r}")
        if not spec.check(value):
            raise ValueError(f"parameter {key!r} of dataset {dataset!r} must be {spec.allowed}, got {value!r}")
        result[key] = float(value) if float in spec.types and not isinstance(value, bool) else value
    return result


def take_tensors(dataset: Dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` points (all when None) of ``dataset`` as ``(x, y)`` tensors."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be None or an integer >= 0, got {limit!r}")
    size = len(dataset)  # type: ignore[arg-type]
    count = size if limit is None else min(limit, size)
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        return tensors[0][:count], tensors[1][:count]
    if count == 0:
        if size == 0:
            return torch.empty(0), torch.empty(0, dtype=torch.int64)
        x0, _ = dataset[0]
        return torch.empty((0, *torch.as_tensor(x0).shape)), torch.empty(0, dtype=torch.int64)
    items = [dataset[i] for i in range(count)]
    x = torch.stack([torch.as_tensor(item[0], dtype=torch.float32) for item in items])
    y = torch.as_tensor([int(item[1]) for item in items], dtype=torch.int64)
    return x, y


def prepared_dir(data_dir: str | os.PathLike[str], name: str) -> Path:
    return Path(data_dir) / "prepared" / name


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``target``; on success it replaces ``target``.

    On an exception the folder is removed and ``target`` is left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield stage
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(stage, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def save_tensors(path: Path, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Save one split (``x`` uint8 pixels or float32 values, ``y`` int64); return its summary."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{path.name}: {x.shape[0]} inputs but {y.shape[0]} labels")
    torch.save({"x": x.contiguous(), "y": y.to(torch.int64).contiguous()}, path)
    return {
        "file": path.name,
        "count": int(y.shape[0]),
        "x_shape": list(x.shape[1:]),
        "x_dtype": str(x.dtype).removeprefix("torch."),
        "class_counts": torch.bincount(y.to(torch.int64)).tolist() if y.numel() else [],
    }


def load_tensor_split(path: Path) -> TensorDataset:
    """Read a split saved by :func:`save_tensors`: uint8 pixels become float32 in [0, 1]."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    x, y = payload["x"], payload["y"]
    x = x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float32)
    return TensorDataset(x, y.to(torch.int64))


class BaseDataset(ABC):
    """A registered dataset: static ``info``, ``prepare`` (I/O, idempotent) and ``load``."""

    info: DatasetInfo
    param_specs: Mapping[str, Param] = {}

    @property
    def name(self) -> str:
        return self.info.name

    def validate_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults filled in; ValueError naming the parameter and allowed values otherwise."""
        return validate_params(self.name, self.param_specs, params)

    def prepare(
        self,
        data_dir: str | os.PathLike[str],
        params: Mapping[str, Any] | None = None,
        mirror: str | os.PathLike[str] | None = None,
    ) -> dict[str, Any]:
        """Fetch, verify and convert the data under ``data_dir``; return the manifest.

        Returns at once when a complete preparation with the same parameters exists.
        """
        params = self.validate_params(params)
        data_dir = Path(data_dir)
        target = prepared_dir(data_dir, self.name)
        existing = self._complete_manifest(target, params)
        if existing is not None:
            return existing
        candidates = self._created_dirs(data_dir)
        existed = {path for path in candidates if path.exists()}
        try:
            return self._prepare_staged(data_dir, target, params, mirror)
        except BaseException:
            for path in sorted(set(candidates) - existed, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    path.rmdir()  # only folders this call created and left empty
            raise

    def _prepare_staged(
        self, data_dir: Path, target: Path, params: dict[str, Any], mirror: str | os.PathLike[str] | None
    ) -> dict[str, Any]:
        with staged_directory(target) as stage:
            details = self._prepare(data_dir, stage, params, mirror)
            manifest: dict[str, Any] = {
                "format_version": FORMAT_VERSION,
                "dataset": self.name,
                "info": self.info.to_dict(),
                "source": self.info.source,
                "params": params,
                **details,
                "files": {
                    path.name: {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
                    for path in sorted(stage.iterdir())
                    if path.is_file()
                },
            }
            write_json_atomic(stage / MANIFEST_NAME, manifest)  # last: the completion marker
        return manifest

    def load(self, data_dir: str | os.PathLike[str], params: Mapping[str, Any] | None = None) -> DatasetSplits:
        """Read the prepared splits; DatasetNotPreparedError when ``prepare`` has not run."""
        params = self.validate_params(params)
        data_dir = Path(data_dir)
        target = prepared_dir(data_dir, self.name)
        manifest_path = target / MANIFEST_NAME
        if not manifest_path.is_file():
            raise DatasetNotPreparedError(self.name, data_dir, f"{manifest_path} does not exist")
        manifest = read_json(manifest_path)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DatasetNotPreparedError(self.name, data_dir, "it was prepared by another lipbench version")
        if manifest.get("params") != params:
            raise DatasetNotPreparedError(
                self.name, data_dir, f"it was prepared with params {manifest.get('params')}, not {params}"
            )
        missing = [name for name in manifest.get("files", {}) if not (target / name).is_file()]
        if missing:
            raise DatasetNotPreparedError(self.name, data_dir, f"prepared files are missing: {', '.join(missing)}")
        train, test = self._load(data_dir, target, manifest)
        return DatasetSplits(info=self.info, train=train, test=test, manifest=manifest)

    def _created_dirs(self, data_dir: Path) -> list[Path]:
        """Folders ``prepare`` may create; those it created are removed again if it fails empty."""
        return [data_dir, data_dir / "prepared", data_dir / "raw"]

    def _complete_manifest(self, target: Path, params: dict[str, Any]) -> dict[str, Any] | None:
        try:
            manifest = read_json(target / MANIFEST_NAME)
        except (OSError, ValueError):
            return None
        if manifest.get("format_version") != FORMAT_VERSION or manifest.get("params") != params:
            return None
        for name, record in manifest.get("files", {}).items():
            path = target / name
            if not path.is_file() or path.stat().st_size != record.get("bytes"):
                return None
        return manifest

    @abstractmethod
    def _prepare(
        self, data_dir: Path, stage: Path, params: dict[str, Any], mirror: str | os.PathLike[str] | None
    ) -> dict[str, Any]:
        """Write the prepared files into ``stage``; return manifest entries (``splits``, ...)."""

    def _load(self, data_dir: Path, target: Path, manifest: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
        """Default: tensor splits saved as ``train.pt`` and ``test.pt``."""
        return load_tensor_split(target / "train.pt"), load_tensor_split(target / "test.pt")


DATASETS: Registry[BaseDataset] = Registry("dataset", entry_point_group="lipbench.datasets")


def register_dataset(name: str) -> Callable[[Any], Any]:
    """Decorator registering a dataset class (instantiated without arguments) or instance."""

    def decorator(obj: Any) -> Any:
        instance = obj() if isinstance(obj, type) else obj
        for attribute in ("info", "prepare", "load"):
            if not hasattr(instance, attribute):
                raise TypeError(f"dataset {name!r} lacks {attribute!r}; datasets need info, prepare and load")
        if instance.info.name != name:
            raise ValueError(f"dataset registered as {name!r} has info.name {instance.info.name!r}")
        DATASETS.add(name, instance)
        return obj

    DATASETS.register(name)  # validates the name; the decorator it returns is not used
    return decorator
