"""The saliency map as a transport direction: alignment with minimal adversarial examples and
the gradient counterfactual.

Serrurier et al., "On the explainable properties of 1-Lipschitz neural networks: an optimal
transport perspective" (NeurIPS 2023): for an OT-trained 1-Lipschitz classifier the gradient
points towards the nearest adversarial example and ``x' = x - f(x) ∇f(x)`` lies on the
decision boundary (section 3 and Fig. 2; ``‖∇f‖ = 1``). With the class margin ``m`` of
:mod:`lipbench.explain.saliency` (binary: ``m ∇m = f ∇f``; multiclass: ``m = f_c - f_j`` for the
runner-up ``j``):

- alignment: ``cos(-∇m(x), x_adv - x)`` per point, ``x_adv`` the attack stage's minimal
  adversarial example (1 for a linear model, whose minimal adversarial is
  ``x - m(x) ∇m / ‖∇m‖²``);
- counterfactual: the smallest ``t`` for which ``x - t m(x) ∇m(x)`` is classified otherwise,
  and its L2 distance ``t m(x) ‖∇m(x)‖``. No perturbation shorter than the certified radius
  changes the class, so this distance is at least the radius for every point whose radius
  rests on a valid bound: :func:`counterfactual_checks` counts the points where it is not.
  The path is not clipped to the data's bounds (the attacks' examples are), so a
  counterfactual may be nearer than the minimal adversarial example found by an attack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from lipbench.explain.saliency import predicted_classes

__all__ = [
    "adversarial_alignment",
    "Counterfactuals",
    "gradient_counterfactuals",
    "rounding_slack",
    "counterfactual_checks",
]


def adversarial_alignment(gradient: Tensor, x: Tensor, x_adv: Tensor) -> Tensor:
    """``(N,)``: cosine between ``-∇m(x)`` and ``x_adv - x``; NaN where ``x_adv`` is missing
    (NaN: the attack found none) or either vector is zero."""
    direction = -gradient.reshape(len(x), -1).double()
    step = (x_adv - x).reshape(len(x), -1).double()
    scale = direction.norm(dim=1) * step.norm(dim=1)
    cosine = (direction * step).sum(dim=1) / torch.where(scale > 0, scale, torch.nan)
    return cosine.to(x.dtype)


@dataclass
class Counterfactuals:
    """Per point: ``t`` (NaN where none found), the counterfactual ``x - t m ∇m`` and its L2
    distance from ``x`` (``inf`` where none found), and whether the class flipped."""

    t: Tensor
    points: Tensor
    distance: Tensor
    flipped: Tensor


@torch.no_grad()
def _flips(model: nn.Module, x: Tensor, step: Tensor, scales: Tensor, classes: Tensor, batch_size: int) -> Tensor:
    """``(N, S)``: whether ``x + scales[n, s] * step`` is classified other than ``classes``."""
    n, count = scales.shape
    shape = (n, count, *([1] * (x.ndim - 1)))
    moved = (x[:, None] + scales.reshape(shape) * step[:, None]).reshape(n * count, *x.shape[1:])
    chosen = torch.cat([predicted_classes(model(moved[i : i + batch_size])) for i in range(0, len(moved), batch_size)])
    return chosen.reshape(n, count) != classes[:, None]


def _linearised_step(x: Tensor, margin: Tensor, gradient: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``‖∇m‖²``, where the step is defined (``∇m ≠ 0``, ``m ≠ 0``), and ``-m ∇m / ‖∇m‖²`` (0 elsewhere)."""
    n, shape = len(x), (len(x), *([1] * (x.ndim - 1)))
    norm2 = gradient.reshape(n, -1).double().pow(2).sum(dim=1)
    usable = (norm2 > 0) & (margin != 0)
    step = -(margin.double() / torch.where(usable, norm2, 1.0)).reshape(shape) * gradient.double()
    return norm2, usable, torch.where(usable.reshape(shape), step, 0.0).to(x.dtype)


def flipped_at(
    model: nn.Module, x: Tensor, classes: Tensor, margin: Tensor, gradient: Tensor, u: float, batch_size: int = 256
) -> Tensor:
    """``(N,)``: 1.0 where ``x - u m(x) ∇m(x) / ‖∇m(x)‖²`` is classified otherwise than ``x``, 0.0 where
    not, NaN where the step is undefined. At ``u = 1 + δ``, just past the boundary of the linearised
    model: an OT-trained network's gradient should flip (nearly) every point there (Serrurier et al.
    2023, section 3)."""
    _, usable, step = _linearised_step(x, margin, gradient)
    scale = torch.full((len(x), 1), float(u), dtype=x.dtype, device=x.device)
    flips = _flips(model, x, step, scale, classes, batch_size)[:, 0].to(x.dtype)
    return torch.where(usable, flips, torch.nan)


def gradient_counterfactuals(
    model: nn.Module,
    x: Tensor,
    classes: Tensor,
    margin: Tensor,
    gradient: Tensor,
    grid: int = 32,
    doublings: int = 10,
    bisection_steps: int = 40,
    batch_size: int = 256,
) -> Counterfactuals:
    """The counterfactual along ``x - t m(x) ∇m(x)`` (Serrurier et al. 2023, section 3, Fig. 2).

    ``t = u / ‖∇m‖²``: ``u = 1`` reaches the boundary of the linearised model. The path is
    scanned at ``u = k / grid`` (``k = 1..2 grid``) then ``u = 2^(1+i)`` (``i = 1..doublings``);
    the first flipped point is refined by ``bisection_steps`` bisections against the scanned
    point before it, and the flipped end is kept (so its distance is never below the true
    distance to the boundary along the path). A flip between scanned points before the first
    flipped one is not seen: the resolution is ``1 / grid`` of the linearised distance.
    """
    n = len(x)
    norm2, usable, step = _linearised_step(x, margin, gradient)
    scan = torch.cat([torch.arange(1, 2 * grid + 1) / grid, 2.0 ** torch.arange(2, doublings + 2)]).to(x.device, x.dtype)
    flips = _flips(model, x, step, scan.expand(n, -1), classes, batch_size) & usable[:, None]
    found = flips.any(dim=1)
    first = flips.int().argmax(dim=1)
    high = scan[first]
    low = torch.where(first > 0, scan[(first - 1).clamp_min(0)], torch.zeros_like(high))
    for _ in range(bisection_steps):
        middle = (low + high) / 2
        flipped = _flips(model, x, step, middle[:, None], classes, batch_size)[:, 0]
        high = torch.where(flipped, middle, high)
        low = torch.where(flipped, low, middle)
    points = x + high.reshape(n, *([1] * (x.ndim - 1))) * step
    distance = (points - x).reshape(n, -1).norm(dim=1)
    t = (high.double() / torch.where(usable, norm2, 1.0)).to(x.dtype)
    return Counterfactuals(
        t=torch.where(found, t, torch.nan),
        points=torch.where(found.reshape(n, *([1] * (x.ndim - 1))), points, torch.nan),
        distance=torch.where(found, distance, torch.inf),
        flipped=found,
    )


def rounding_slack(logits: np.ndarray, gradient_norm: np.ndarray, ulps: float = 8.0) -> np.ndarray:
    """Per point, the distance float32 rounding can account for: ``ulps`` units of the largest
    logit's last place, over ``‖∇m‖`` (margins near 0 are differences of rounded logits)."""
    scale = np.abs(np.asarray(logits, dtype=np.float64)).reshape(len(logits), -1).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gradient_norm > 0, ulps * np.finfo(np.float32).eps * scale / gradient_norm, 0.0)


def counterfactual_checks(
    distance: np.ndarray, radius: np.ndarray, slack: np.ndarray | float = 0.0, rtol: float = 1e-5
) -> np.ndarray:
    """Indices of the points whose counterfactual is nearer than their certified radius
    (``distance < radius (1 - rtol) - slack``; see :func:`rounding_slack`): impossible under a
    valid certificate."""
    finite = np.isfinite(distance)
    return np.flatnonzero(finite & (distance < radius * (1 - rtol) - slack))
