"""The explain stage's counterfactual figures of Serrurier et al. (NeurIPS 2023, section 3), from
one model's per-point arrays (``explain.npz``; numpy only, no torch: the report reads it).

* ``flipped_past_boundary``: the fraction of points whose counterfactual
  ``x' = x - u m(x) ∇m(x) / ‖∇m(x)‖²`` at ``u = 1 + δ`` (just past the boundary of the
  linearised model) is classified otherwise than ``x``; near 1 when the gradient points along the
  transport plan to the decision boundary.
* ``linearised_over_min_adversarial``: the median over points of ``|m(x)| / ‖∇m(x)‖`` (the
  distance to the boundary of the linearised model, a lower bound of the true distance for a
  1-Lipschitz margin) over the smallest minimal adversarial norm the attacks found; near 1 for an
  OT-optimal classifier.

``m`` is the decision margin (binary ``f``, multiclass ``f_top - f_runner-up``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CounterfactualFigures", "counterfactual_figures"]


@dataclass(frozen=True)
class CounterfactualFigures:
    """``None`` where no point defines the figure; ``points``: the points each figure is over."""

    flipped_past_boundary: float | None
    flipped_points: int
    linearised_over_min_adversarial: float | None
    ratio_points: int


def counterfactual_figures(arrays: Path | dict[str, np.ndarray]) -> CounterfactualFigures:
    """The figures of one model's ``explain.npz`` (or of its arrays, by name)."""
    if isinstance(arrays, (str, Path)):
        with np.load(arrays, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    flipped = np.asarray(arrays["counterfactual_flipped_past_boundary"], dtype=np.float64)
    defined = flipped[np.isfinite(flipped)]
    margin = np.abs(np.asarray(arrays["margin"], dtype=np.float64))
    gradient_norm = np.asarray(arrays["gradient_norm"], dtype=np.float64)
    adversarial = np.asarray(arrays["min_adversarial_norm"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(gradient_norm > 0, margin / gradient_norm, np.nan) / adversarial
    ratio = ratio[np.isfinite(ratio)]
    return CounterfactualFigures(
        flipped_past_boundary=float(defined.mean()) if len(defined) else None,
        flipped_points=len(defined),
        linearised_over_min_adversarial=float(np.median(ratio)) if len(ratio) else None,
        ratio_points=len(ratio),
    )
