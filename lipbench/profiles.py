"""A pipeline profile: the ``params.yaml`` beside a ``dvc.yaml`` (quick, mnist, paper).

The file is both DVC's parameter file (stages depend on its sections) and the source
of the stage matrix (``datasets``, ``models``, ``seeds``). A *model* is a model variant: a
registered method with its parameters (``train.<dataset>.<model>``, which may name the
method with a ``method`` key, e.g. ``hkr_m2_12: {method: hkr, margin: 2.12}``). Paths in it are relative to
the stage working directory, the repository root. Every accessor validates what it
reads and names the file and key in its errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Profile", "load_profile", "ProfileError"]

_REQUIRED = ("profile", "datasets", "models", "seeds", "paths", "prepare", "train")
_PATHS = ("data", "models", "evaluation", "metrics", "reports")


class ProfileError(ValueError):
    """A profile's params file is missing something or has a bad value."""


@dataclass(frozen=True)
class Profile:
    path: Path
    params: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.params["profile"])

    @property
    def datasets(self) -> list[str]:
        return list(self.params["datasets"])

    @property
    def models(self) -> list[str]:
        """The model variants (``models``): registered methods with their parameters."""
        return list(self.params["models"])

    @property
    def seeds(self) -> list[int]:
        return list(self.params["seeds"])

    def path_of(self, key: str) -> Path:
        return Path(self.params["paths"][key])

    def section(self, *keys: str) -> Mapping[str, Any]:
        """``params[k1][k2]...``; a missing key is a ProfileError naming the file and key path."""
        node: Any = self.params
        for depth, key in enumerate(keys):
            if not isinstance(node, Mapping) or key not in node:
                dotted = ".".join(keys[: depth + 1])
                raise ProfileError(f"{self.path}: missing {dotted}; add it (see pipelines/README.md for the layout)")
            node = node[key]
        if node is None:
            return {}
        if not isinstance(node, Mapping):
            raise ProfileError(f"{self.path}: {'.'.join(keys)} must be a mapping, got {node!r}")
        return node

    def check_member(self, kind: str, value: Any) -> None:
        members = {"dataset": self.datasets, "model": self.models, "seed": self.seeds}[kind]
        if value not in members:
            raise ProfileError(
                f"{self.path}: {kind} {value!r} is not in this profile's {kind}s ({', '.join(map(str, members))}); "
                f"add it to '{kind}s' or pick one of those"
            )

    def prepare_params(self, dataset: str) -> dict[str, Any]:
        return dict(self.section("prepare", dataset))

    def mirror(self) -> str | None:
        """The ``prepare.mirror`` param; empty means: use $LIPBENCH_DATA_MIRROR if set."""
        value = self.section("prepare").get("mirror")
        return str(value) if value else None

    def recipe(self, dataset: str) -> dict[str, Any]:
        return dict(self.section("train", dataset, "recipe"))

    def model_params(self, dataset: str, model: str) -> dict[str, Any]:
        return dict(self.section("train", dataset, model))

    def device(self) -> str:
        """``train.device``: auto (a free GPU when there is one, else CPU), cpu, cuda, cuda:N."""
        value = self.section("train").get("device", "auto")
        if value not in ("auto", "cpu", "cuda") and not str(value).startswith("cuda:"):
            raise ProfileError(f"{self.path}: train.device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return str(value)

    def train_workers(self) -> int:
        """``train.workers``: models trained at a time by the train stage (parallel processes;
        on CPU one torch thread each, so a model's bytes do not depend on the core count)."""
        value = self.section("train").get("workers", 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ProfileError(f"{self.path}: train.workers must be a whole number >= 1, got {value!r}")
        return value


def load_profile(path: str | Path) -> Profile:
    """Read and check the top-level structure of a profile's params file."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"params file {path} does not exist; run from the repository root (e.g. --params params.yaml)")
    with open(path, encoding="utf-8") as handle:
        params = yaml.safe_load(handle) or {}
    if not isinstance(params, Mapping):
        raise ProfileError(f"{path}: expected a mapping at the top level")
    if "methods" in params and "models" not in params:
        raise ProfileError(
            f"{path}: the top-level key 'methods' is now 'models' (the list of model variants to train); rename it"
        )
    missing = [key for key in _REQUIRED if key not in params]
    if missing:
        raise ProfileError(f"{path}: missing top-level keys {', '.join(missing)}")
    for key in ("datasets", "models", "seeds"):
        value = params[key]
        if not isinstance(value, list) or not value:
            raise ProfileError(f"{path}: {key} must be a non-empty list, got {value!r}")
    for seed in params["seeds"]:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ProfileError(f"{path}: seeds must be integers >= 0, got {seed!r}")
    paths = params["paths"]
    if not isinstance(paths, Mapping) or any(key not in paths for key in _PATHS):
        raise ProfileError(f"{path}: paths must give {', '.join(_PATHS)}")
    return Profile(path=path, params=params)
