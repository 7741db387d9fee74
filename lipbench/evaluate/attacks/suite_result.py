""":class:`SuiteResult`, what :func:`~lipbench.evaluate.attacks.protocol.run_attack_suite` returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SuiteResult:
    """Outcome of ``run_attack_suite`` on ``N`` points and ``E`` radii (numpy, CPU).

    ``success[name]`` ``(E, N)``; ``robust`` ``(E, N)``; ``robust_accuracy`` ``(E,)``;
    ``min_norms[name]`` ``(N,)`` for minimal-perturbation attacks (0 for misclassified
    points, ``inf`` where none was found) and ``min_norm`` their pointwise minimum;
    ``examples[name]``: eps attacks ``(E, k, *shape)``, minimal attacks ``(k, *shape)``,
    verified adversarial examples of the first ``k`` points, NaN where there is none;
    ``calls[name]``: points (x radii, for eps attacks) handed to the attack, and
    ``calls_unpruned[name]`` the same without pruning. For eps attacks,
    ``calls + calls_saved_by_certificates + calls_saved_by_smaller_eps == calls_unpruned``.
    """

    epsilons: list[float]
    attacks: list[str]
    clean_correct: np.ndarray
    certified: np.ndarray | None
    success: dict[str, np.ndarray]
    robust: np.ndarray
    min_norms: dict[str, np.ndarray]
    min_norm: np.ndarray | None
    examples: dict[str, np.ndarray]
    example_indices: np.ndarray
    calls: dict[str, int]
    calls_unpruned: dict[str, int]
    certificate_violations: np.ndarray
    pruned: bool
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: eps attacks: points handed to the attack at each eps (unpruned: ``n_points`` each).
    calls_by_eps: dict[str, list[int]] = field(default_factory=dict)
    #: eps attacks: (point, eps) pairs skipped as misclassified, ``eps == 0`` or certified.
    calls_saved_by_certificates: dict[str, int] = field(default_factory=dict)
    #: eps attacks: (point, eps) pairs skipped because the attack broke the point at a smaller eps.
    calls_saved_by_smaller_eps: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"  # what the attacks queried; verification is always float32
    compiled: bool = False

    @property
    def n_points(self) -> int:
        return len(self.clean_correct)

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.mean())

    @property
    def robust_accuracy(self) -> np.ndarray:
        """``(E,)`` fraction of points correct and unbroken by every attack."""
        return self.robust.mean(axis=1)

    @property
    def per_attack_robust_accuracy(self) -> dict[str, np.ndarray]:
        """``(E,)`` per attack: fraction of points correct and unbroken by that attack."""
        return {name: (self.clean_correct[None, :] & ~self.success[name]).mean(axis=1) for name in self.attacks}

    @property
    def certified_accuracy(self) -> np.ndarray | None:
        return None if self.certified is None else self.certified.mean(axis=1)

    @property
    def calls_saved(self) -> int:
        return sum(self.calls_unpruned.values()) - sum(self.calls.values())

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable headline numbers and provenance."""
        certified = self.certified_accuracy
        return {
            "epsilons": self.epsilons,
            "attacks": self.attacks,
            "n_points": self.n_points,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy.tolist(),
            "certified_accuracy": None if certified is None else certified.tolist(),
            "attack_success_rate": {k: v.mean(axis=1).tolist() for k, v in self.success.items()},
            "calls": dict(self.calls),
            "calls_unpruned": dict(self.calls_unpruned),
            "calls_saved": self.calls_saved,
            "calls_saved_by_certificates": dict(self.calls_saved_by_certificates),
            "calls_saved_by_smaller_eps": dict(self.calls_saved_by_smaller_eps),
            "calls_by_eps": dict(self.calls_by_eps),
            "certificate_violations": self.certificate_violations.tolist(),
            "pruned": self.pruned,
            "precision": self.precision,
            "compiled": self.compiled,
            "seconds": dict(self.seconds),
            "info": _jsonable(self.info),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
