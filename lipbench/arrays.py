"""The per-point arrays of the certify and attack stages (``certify.npz``, ``attack.npz``).

Each file is described by a dataclass that saves and loads it; names are explicit (an
``attack.npz`` lists its attacks), so nothing is found by matching key prefixes. Files
are written atomically and read without unpickling. Light module: numpy only.
"""

from __future__ import annotations

import dataclasses
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lipbench.io import atomic_path

__all__ = ["ArraysError", "CertifyArrays", "AttackArrays"]


class ArraysError(ValueError):
    """An arrays file lacks an array of its schema (written by an older lipbench)."""


_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed entry times: equal arrays give byte-identical files


def _save(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed``'s format (``np.load`` reads it), byte-deterministic: numpy's own
    writer stamps every entry with the current time, so identical results differ on disk."""
    with atomic_path(path) as temporary:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, value in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w", force_zip64=True) as entry:
                    np.lib.format.write_array(entry, np.asanyarray(value), allow_pickle=False)


def _load(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def _take(arrays: dict[str, np.ndarray], name: str, path: str | Path) -> np.ndarray:
    if name not in arrays:
        raise ArraysError(f"{path} lacks the array {name!r} (made by an older lipbench); rerun its stage (dvc repro)")
    return arrays[name]


@dataclass
class CertifyArrays:
    """Certify stage, per point (first ``N`` test points): radius, correctness, labels, the
    predicted class (the decision rule of :func:`lipbench.nn.certificates.predictions`),
    logits, input gradients of the first ``G`` points, and ``certificate`` (int8: the
    certificate each radius comes from, an index of
    :data:`lipbench.nn.certificates.CERTIFICATE_KINDS`: 0 whole map, 1 per logit, 2 pairwise);
    for 2-D inputs, the logits on a grid (``grid_x``, ``grid_y``, ``grid_values``) for
    level-set figures."""

    radius: np.ndarray
    correct: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    logits: np.ndarray
    gradients: np.ndarray
    epsilons: np.ndarray
    whole_map_lipschitz: np.ndarray
    per_logit_lipschitz: np.ndarray
    certificate: np.ndarray
    grid_x: np.ndarray | None = None
    grid_y: np.ndarray | None = None
    grid_values: np.ndarray | None = None

    @property
    def has_grid(self) -> bool:
        return self.grid_values is not None

    def save(self, path: str | Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        _save(path, arrays)

    @classmethod
    def load(cls, path: str | Path) -> CertifyArrays:
        arrays = _load(path)
        values = {}
        for spec in dataclasses.fields(cls):
            optional = spec.default is None
            values[spec.name] = arrays.get(spec.name) if optional else _take(arrays, spec.name, path)
        return cls(**values)


@dataclass
class AttackArrays:
    """Attack stage, per point (first ``N`` test points) and eps (``E``).

    ``success[name]`` ``(E, N)`` per attack; ``robust`` ``(E, N)`` (correct and unbroken by
    every attack); ``examples[name]``: verified adversarial examples of the points
    ``example_indices`` (eps attacks ``(E, k, ...)``, minimal attacks ``(k, ...)``, NaN where
    none); ``min_norms[name]`` ``(N,)`` for the minimal-perturbation attacks; and
    ``deepfool_curve_min_norm`` (``(M,)``, DeepFool on the first ``M >= N`` points) when the
    profile asks for a longer DeepFool curve.
    """

    epsilons: np.ndarray
    robust: np.ndarray
    clean_correct: np.ndarray
    example_indices: np.ndarray
    attacks: list[str]
    success: dict[str, np.ndarray]
    examples: dict[str, np.ndarray]
    min_norms: dict[str, np.ndarray] = field(default_factory=dict)
    deepfool_curve_min_norm: np.ndarray | None = None

    def save(self, path: str | Path) -> None:
        arrays = {
            "epsilons": self.epsilons,
            "robust": self.robust,
            "clean_correct": self.clean_correct,
            "example_indices": self.example_indices,
            "attacks": np.asarray(self.attacks, dtype=str),
            "minimal_attacks": np.asarray(list(self.min_norms), dtype=str),
        }
        for name in self.attacks:
            arrays[f"success_{name}"] = self.success[name]
            arrays[f"examples_{name}"] = self.examples[name]
        for name, norms in self.min_norms.items():
            arrays[f"min_norm_{name}"] = norms
        if self.deepfool_curve_min_norm is not None:
            arrays["deepfool_curve_min_norm"] = self.deepfool_curve_min_norm
        _save(path, arrays)

    @classmethod
    def load(cls, path: str | Path) -> AttackArrays:
        arrays = _load(path)
        attacks = [str(name) for name in _take(arrays, "attacks", path)]
        minimal = [str(name) for name in _take(arrays, "minimal_attacks", path)]
        return cls(
            epsilons=_take(arrays, "epsilons", path),
            robust=_take(arrays, "robust", path),
            clean_correct=_take(arrays, "clean_correct", path),
            example_indices=_take(arrays, "example_indices", path),
            attacks=attacks,
            success={name: _take(arrays, f"success_{name}", path) for name in attacks},
            examples={name: _take(arrays, f"examples_{name}", path) for name in attacks},
            min_norms={name: _take(arrays, f"min_norm_{name}", path) for name in minimal},
            deepfool_curve_min_norm=arrays.get("deepfool_curve_min_norm"),
        )

    def deepfool_norms(self) -> np.ndarray | None:
        """DeepFool's minimal norms on the most points available (the curve, else the attack set)."""
        if self.deepfool_curve_min_norm is not None:
            return self.deepfool_curve_min_norm
        return self.min_norms.get("deepfool_l2")
