"""Explanation settings of a profile: ``explain.<dataset>`` (every key optional), plus the
evaluation's ``batch_size`` and ``device`` (``evaluate``) and its ``certify_points``.

Read and checked before any model is loaded; every value a result depends on is part of the
explain stage's fingerprint (:meth:`ExplainSettings.as_dict`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from lipbench.profiles import Profile, ProfileError

__all__ = ["ExplainSettings", "explain_settings"]


@dataclass(frozen=True)
class ExplainSettings:
    """How one dataset's models are explained (see :mod:`lipbench.explain.run`).

    ``points``: the first test points explained (at most ``evaluate.<dataset>.certify_points``:
    their certified radii come from the certify stage). ``baseline``: the value deleted
    features take (deletion, insertion, µ-fidelity). ``deletion_steps``: samples of the
    deletion / insertion curves. ``fidelity_subset_fraction`` of the features form each of the
    ``fidelity_subsets`` µ-fidelity subsets. ``sensitivity_radius`` / ``sensitivity_samples``:
    the L∞ noise of max-sensitivity. ``counterfactual_grid`` / ``counterfactual_bisections``:
    the counterfactual search. ``counterfactual_delta``: the counterfactual is also evaluated at
    ``u = 1 + delta``, just past the linearised boundary (Serrurier et al. 2023). ``seed``: every
    random draw.
    """

    points: int = 64
    baseline: float = 0.0
    deletion_steps: int = 32
    fidelity_subset_fraction: float = 0.2
    fidelity_subsets: int = 128
    sensitivity_radius: float = 0.05
    sensitivity_samples: int = 16
    counterfactual_grid: int = 32
    counterfactual_bisections: int = 40
    counterfactual_delta: float = 0.05
    seed: int = 0
    batch_size: int = 256
    device: str = "auto"

    def as_dict(self) -> dict[str, Any]:
        """The settings results depend on (``device`` and ``batch_size`` excluded)."""
        values = dataclasses.asdict(self)
        del values["device"], values["batch_size"]
        return values

    def subset_size(self, features: int) -> int:
        """µ-fidelity's fixed subset size for ``features`` features: ``round(fraction P)``, at least 1."""
        return max(1, min(features, round(self.fidelity_subset_fraction * features)))


_INTEGERS = ("points", "deletion_steps", "fidelity_subsets", "sensitivity_samples", "counterfactual_grid")


def _check_number(where: str, name: str, value: Any, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (positive and value <= 0):
        kind = "a finite number > 0" if positive else "a finite number"
        raise ProfileError(f"{where}.{name} must be {kind}, got {value!r}")
    return float(value)


def _check_integer(where: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProfileError(f"{where}.{name} must be an integer >= {minimum}, got {value!r}")
    return value


def explain_settings(profile: Profile, dataset: str) -> ExplainSettings:
    """``explain.<dataset>`` with defaults for absent keys, checked; a ProfileError names the key."""
    profile.check_member("dataset", dataset)
    where = f"{profile.path}: explain.{dataset}"
    explain = profile.params.get("explain") or {}
    section = dict(explain.get(dataset) or {}) if isinstance(explain, dict) else {}
    defaults = ExplainSettings()
    known = set(defaults.as_dict())
    unknown = sorted(set(section) - known)
    if unknown:
        raise ProfileError(f"{where}: unknown keys {', '.join(unknown)}; accepted: {', '.join(sorted(known))}")
    values = {**defaults.as_dict(), **section}
    for name in _INTEGERS:
        values[name] = _check_integer(where, name, values[name], 1)
    for name in ("counterfactual_bisections", "seed"):
        values[name] = _check_integer(where, name, values[name], 0)
    values["baseline"] = _check_number(where, "baseline", values["baseline"], positive=False)
    values["sensitivity_radius"] = _check_number(where, "sensitivity_radius", values["sensitivity_radius"], positive=True)
    fraction = _check_number(where, "fidelity_subset_fraction", values["fidelity_subset_fraction"], positive=True)
    if fraction > 1:
        raise ProfileError(f"{where}.fidelity_subset_fraction must be in (0, 1], got {fraction!r}")
    delta = _check_number(where, "counterfactual_delta", values["counterfactual_delta"], positive=True)
    if delta > 1:
        raise ProfileError(f"{where}.counterfactual_delta must be in (0, 1], got {delta!r}")
    evaluate = profile.section("evaluate")
    certify_points = (evaluate.get(dataset) or {}).get("certify_points", 1000)
    if values["points"] > certify_points:
        raise ProfileError(
            f"{where}.points ({values['points']}) exceeds evaluate.{dataset}.certify_points ({certify_points}): "
            "the explained points need the certify stage's radii; lower it"
        )
    return ExplainSettings(**values, batch_size=int(evaluate.get("batch_size", 256)), device=str(evaluate.get("device", "auto")))
