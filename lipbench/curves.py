"""Accuracy-vs-eps curves from per-point arrays (numpy only: the report builds its tables and
curves without importing torch).

* certified accuracy: correct points whose certified radius is *strictly* above eps (a
  point exactly at distance eps from the boundary could be moved onto it);
* accuracy under a minimal-perturbation attack: points whose verified minimal adversarial
  norm exceeds eps (with :data:`REL_TOL`, the tolerance every attack's stored distance has).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["REL_TOL", "certified_accuracy_curve", "accuracy_from_min_norms"]

#: Relative tolerance on ``||x_adv - x||_2 <= eps`` (float32 rounding of stored points).
REL_TOL = 1e-6


def _checked_epsilons(epsilons: Sequence[float]) -> np.ndarray:
    values = [float(eps) for eps in epsilons]
    for eps in values:
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"epsilons must be finite and >= 0, got {eps}")
    return np.asarray(values, dtype=np.float64)


def certified_accuracy_curve(radius: np.ndarray, correct: np.ndarray, epsilons: Sequence[float]) -> np.ndarray:
    """``(E,)``: fraction of points that are correct with ``radius > eps`` (strict), per eps,
    compared in the radii's own precision (a float32 radius of 0.1 is not above eps 0.1)."""
    radius, correct = np.asarray(radius), np.asarray(correct, dtype=bool)
    if not np.issubdtype(radius.dtype, np.floating):
        radius = radius.astype(np.float64)
    if radius.shape != correct.shape or radius.ndim != 1:
        raise ValueError(f"radius and correct must be 1-D of the same length, got {radius.shape} and {correct.shape}")
    if len(radius) == 0:
        raise ValueError("certified accuracy needs at least one point")
    eps = _checked_epsilons(epsilons).astype(radius.dtype)
    return ((radius[None, :] > eps[:, None]) & correct[None, :]).mean(axis=1)


def accuracy_from_min_norms(min_norm: np.ndarray, epsilons: Sequence[float]) -> np.ndarray:
    """``(E,)`` robust accuracy implied by minimal perturbation norms (0 for misclassified
    points, ``inf`` where no adversarial example was found)."""
    eps = _checked_epsilons(epsilons)[:, None]
    return (np.asarray(min_norm, dtype=np.float64)[None, :] > eps * (1 + REL_TOL)).mean(axis=1)
