"""The decision rule and certified L2 radii from a strict Lipschitz upper bound (paper section 3).

:func:`predictions` is the one decision rule of lipbench (training accuracy, certificates,
attacks, the soundness gate): class 1 where ``f > 0`` for a single logit, argmax otherwise.

Binary (one logit): ``|f(x)| / L``. Multiclass with margin ``top1 - top2``:
``margin / (sqrt(2) L)`` when the whole logit map is L-Lipschitz, ``margin / (2 L)``
when each logit is separately L-Lipschitz. With both bounds known, the larger of the
two radii is certified. A radius is a lower bound on the L2 distance from ``x`` to the
decision boundary: no perturbation of smaller norm can change the predicted class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lipbench.curves import certified_accuracy_curve

__all__ = ["certified_radius", "certified_accuracy", "predictions"]


def predictions(logits: Tensor) -> Tensor:
    """Predicted class: ``f > 0`` for one logit, argmax otherwise."""
    if logits.ndim == 1 or logits.shape[1] == 1:
        return (logits.reshape(len(logits)) > 0).long()
    return logits.argmax(dim=1)


def _positive_finite(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"certified_radius: {name} must be a finite positive Lipschitz bound, got {value}")


def certified_radius(
    logits: Tensor,
    whole_map_lipschitz: float | None = None,
    per_logit_lipschitz: float | None = None,
) -> Tensor:
    """Certified radius of every point, shape ``(N,)``.

    ``whole_map_lipschitz`` bounds the whole logit map, ``per_logit_lipschitz`` every
    logit separately (use the max over logits); give at least one. Both must be strict
    upper bounds (:func:`lipbench.nn.lipschitz_upper_bound`), never estimates.
    """
    if whole_map_lipschitz is None and per_logit_lipschitz is None:
        raise ValueError("certified_radius needs whole_map_lipschitz, per_logit_lipschitz, or both")
    _positive_finite("whole_map_lipschitz", whole_map_lipschitz)
    _positive_finite("per_logit_lipschitz", per_logit_lipschitz)
    logits = logits.detach()
    if logits.ndim == 1 or logits.shape[1] == 1:
        bounds = [b for b in (whole_map_lipschitz, per_logit_lipschitz) if b is not None]
        return logits.reshape(len(logits)).abs() / min(bounds)
    top = logits.topk(2, dim=1).values
    margin = top[:, 0] - top[:, 1]
    radii = []
    if whole_map_lipschitz is not None:
        radii.append(margin / (math.sqrt(2.0) * whole_map_lipschitz))
    if per_logit_lipschitz is not None:
        radii.append(margin / (2.0 * per_logit_lipschitz))
    return torch.stack(radii).max(dim=0).values


def certified_accuracy(radius: Tensor, correct: Tensor, epsilons: Sequence[float]) -> dict[float, float]:
    """Fraction of points correctly classified with a radius strictly above each ``eps``
    (see :func:`lipbench.curves.certified_accuracy_curve`)."""
    values = certified_accuracy_curve(radius.detach().cpu().numpy(), correct.detach().cpu().numpy(), epsilons)
    return {float(eps): float(value) for eps, value in zip(epsilons, values)}
