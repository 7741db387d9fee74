"""The model card of a model built elsewhere (``lipbench evaluate --model FILE.onnx --card CARD.yaml``).

A YAML or JSON file next to the model, validated once into a frozen :class:`ModelCard`; every error names the
file and the key. Keys::

    dataset: digits                   # a dataset of the profile
    input_shape: [1, 8, 8]            # one input, without the batch dim
    input_range: [0.0, 1.0]           # the box the model's inputs lie in: the dataset's prepared input space
    normalization: none               # or {mean: [...], std: [...]} per channel, applied by the model's user
    classes: [0, 1, 2, ...]           # the dataset label each logit stands for, in logit order
    num_classes: 10
    authors: "A. Author, B. Author"
    paper: "https://..."              # paper or link
    architecture: "GroupSort2 MLP"    # optional, free text
    claimed_clean_accuracy: 0.97      # optional, fraction in [0, 1]
    training_cost: "2 GPU hours"      # optional, free text
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CARD_SUFFIXES", "ModelCard", "ModelCardError", "load_model_card", "default_card_path"]

_REQUIRED = ("dataset", "input_shape", "input_range", "normalization", "classes", "num_classes", "authors", "paper")
_OPTIONAL = ("architecture", "claimed_clean_accuracy", "training_cost")
CARD_SUFFIXES = (".card.yaml", ".card.yml", ".card.json")


class ModelCardError(ValueError):
    """A missing, unreadable or invalid model card; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class ModelCard:
    """A validated model card (see the module docstring)."""

    path: str
    dataset: str
    input_shape: tuple[int, ...]
    input_range: tuple[float, float]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    classes: tuple[int, ...]
    num_classes: int
    authors: str
    paper: str
    architecture: str = ""
    claimed_clean_accuracy: float | None = None
    training_cost: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The card's fields for the leaderboard entry (JSON types)."""
        normalization = None if self.mean is None else {"mean": list(self.mean), "std": list(self.std or ())}
        return {
            "dataset": self.dataset,
            "input_shape": list(self.input_shape),
            "input_range": list(self.input_range),
            "normalization": normalization,
            "classes": list(self.classes),
            "num_classes": self.num_classes,
            "authors": self.authors,
            "paper": self.paper,
            "architecture": self.architecture,
            "claimed_clean_accuracy": self.claimed_clean_accuracy,
            "training_cost": self.training_cost,
        }


def default_card_path(model: Path) -> Path:
    """The card next to ``model``: ``<stem>.card.yaml`` (or ``.yml`` / ``.json``); the first that exists."""
    candidates = [model.with_name(model.stem + suffix) for suffix in CARD_SUFFIXES]
    return next((path for path in candidates if path.is_file()), candidates[0])


def _fail(path: Path, key: str, problem: str) -> ModelCardError:
    return ModelCardError(f"model card {path}: key {key!r}: {problem}")


def _ints(path: Path, key: str, value: Any, positive: bool) -> tuple[int, ...]:
    ok = isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok or (positive and min(value) < 1):
        kind = "positive integers" if positive else "integers"
        raise _fail(path, key, f"give a non-empty list of {kind}, got {value!r}")
    return tuple(value)


def _floats(path: Path, key: str, value: Any, length: int | None = None) -> tuple[float, ...]:
    numbers = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not numbers or not value or not all(math.isfinite(v) for v in value) or (length and len(value) != length):
        size = f"{length} " if length else ""
        raise _fail(path, key, f"give a list of {size}finite numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _normalization(path: Path, value: Any, channels: int) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    if value in (None, "none"):
        return None, None
    if not isinstance(value, dict) or set(value) != {"mean", "std"}:
        raise _fail(path, "normalization", f"give 'none' or {{mean: [...], std: [...]}}, got {value!r}")
    mean = _floats(path, "normalization.mean", value["mean"], channels)
    std = _floats(path, "normalization.std", value["std"], channels)
    if min(std) <= 0:
        raise _fail(path, "normalization.std", f"every std must be > 0, got {list(std)}")
    return mean, std


def _text(path: Path, raw: dict, key: str, required: bool) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise _fail(path, key, f"give a non-empty string, got {value!r}")
    return value


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ModelCardError(
            f"model card {path} does not exist: write one (keys: {', '.join(_REQUIRED)}) next to the model, or pass --card"
        )
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise ModelCardError(f"model card {path}: cannot be read as {path.suffix.lstrip('.') or 'YAML'}: {error}") from None
    if not isinstance(raw, dict):
        raise ModelCardError(f"model card {path}: must be a mapping of keys to values, got {type(raw).__name__}")
    missing = [key for key in _REQUIRED if key not in raw]
    unknown = sorted(set(map(str, raw)) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        problem = f"missing keys {missing}" if missing else f"unknown keys {unknown}"
        raise ModelCardError(f"model card {path}: {problem}; keys: {', '.join(_REQUIRED)} (optional: {', '.join(_OPTIONAL)})")
    return raw


def load_model_card(path: Path) -> ModelCard:
    """Read and validate the card at ``path`` (:class:`ModelCardError` naming the file and key)."""
    path = Path(path)
    raw = _read(path)
    if not isinstance(raw["dataset"], str) or not raw["dataset"]:
        raise _fail(path, "dataset", f"give the dataset's name, got {raw['dataset']!r}")
    shape = _ints(path, "input_shape", raw["input_shape"], positive=True)
    low, high = _floats(path, "input_range", raw["input_range"], 2)
    if not low < high:
        raise _fail(path, "input_range", f"give [low, high] with low < high, got {[low, high]}")
    mean, std = _normalization(path, raw["normalization"], shape[0])
    num_classes = raw["num_classes"]
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise _fail(path, "num_classes", f"give an integer >= 2, got {num_classes!r}")
    classes = _ints(path, "classes", raw["classes"], positive=False)
    if len(classes) != num_classes:
        raise _fail(path, "classes", f"lists {len(classes)} classes but num_classes is {num_classes}")
    claimed = raw.get("claimed_clean_accuracy")
    if claimed is not None and (isinstance(claimed, bool) or not isinstance(claimed, (int, float)) or not 0 <= claimed <= 1):
        raise _fail(path, "claimed_clean_accuracy", f"give a fraction in [0, 1] (0.97, not 97), got {claimed!r}")
    return ModelCard(
        path=str(path),
        dataset=raw["dataset"],
        input_shape=shape,
        input_range=(low, high),
        mean=mean,
        std=std,
        classes=classes,
        num_classes=num_classes,
        authors=_text(path, raw, "authors", True),
        paper=_text(path, raw, "paper", True),
        architecture=_text(path, raw, "architecture", False),
        claimed_clean_accuracy=None if claimed is None else float(claimed),
        training_cost=_text(path, raw, "training_cost", False),
    )
