"""The decision rule and certified L2 radii from a strict Lipschitz upper bound (paper section 3).

:func:`predictions` is the one decision rule of lipbench (training accuracy, certificates,
attacks, the soundness gate): class 1 where ``f > 0`` for a single logit, argmax otherwise.

Binary (one logit): ``|f(x)| / L``. Multiclass with top class ``t`` and margin ``top1 - top2``:
``margin / (sqrt(2) L)`` when the whole logit map is L-Lipschitz (kind 0, ``whole_map``),
``margin / (2 L)`` when each logit is separately L-Lipschitz (kind 1, ``per_logit``), and
``min_{j != t} (f_t - f_j) / c_tj`` when each logit difference ``f_t - f_j`` is
``c_tj``-Lipschitz (kind 2, ``pairwise``: ``c_ij = L' ||w_i - w_j||`` for a last dense layer
with rows ``w_i`` after a chain with bound ``L'``). The largest of the available radii is
certified, and :func:`certified_radius_and_kind` says which one each point used. A radius is
a lower bound on the L2 distance from ``x`` to the decision boundary: no perturbation of
smaller norm can change the predicted class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lipbench.curves import certified_accuracy_curve

__all__ = [
    "CERTIFICATE_KINDS",
    "certified_radius",
    "certified_radius_and_kind",
    "pairwise_radius",
    "certified_accuracy",
    "predictions",
]

#: The certificate of each kind code (index): whole map, per logit, pairwise logit differences.
CERTIFICATE_KINDS: tuple[str, ...] = ("whole_map", "per_logit", "pairwise")

PairwiseBounds = Tensor | np.ndarray | Sequence[Sequence[float]]


def predictions(logits: Tensor) -> Tensor:
    """Predicted class: ``f > 0`` for one logit, argmax otherwise."""
    if logits.ndim == 1 or logits.shape[1] == 1:
        return (logits.reshape(len(logits)) > 0).long()
    return logits.argmax(dim=1)


def _positive_finite(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"certified_radius: {name} must be a finite positive Lipschitz bound, got {value}")


def _pairwise_matrix(pairwise: PairwiseBounds, classes: int) -> Tensor:
    """The ``(K, K)`` float64 matrix of pairwise bounds, checked: finite and ``>= 0`` off the diagonal."""
    matrix = torch.as_tensor(np.asarray(pairwise, dtype=np.float64) if not isinstance(pairwise, Tensor) else pairwise)
    matrix = matrix.detach().cpu().double()
    if matrix.shape != (classes, classes):
        raise ValueError(f"certified_radius: pairwise must be a ({classes}, {classes}) matrix, got {tuple(matrix.shape)}")
    off = ~torch.eye(classes, dtype=torch.bool)
    if not (torch.isfinite(matrix[off]).all() and (matrix[off] >= 0).all()):
        raise ValueError("certified_radius: pairwise must hold finite Lipschitz bounds >= 0 off the diagonal")
    return matrix


def pairwise_radius(logits: Tensor, pairwise: PairwiseBounds) -> Tensor:
    """``min_{j != t} (f_t - f_j) / c_tj`` per point (float64), ``t`` the argmax.

    ``||d|| < r`` gives ``f_t(x + d) - f_j(x + d) >= f_t - f_j - c_tj ||d|| > 0`` for every ``j``,
    so the class stays ``t`` (strictly ahead of every other logit, ties included). A pair with
    ``c_tj = 0`` (equal rows) never changes sign: it bounds nothing unless the margin is 0.
    """
    values = logits.detach().cpu().double()
    matrix = _pairwise_matrix(pairwise, values.shape[1])
    top = values.argmax(dim=1)
    margins = values.gather(1, top[:, None]) - values
    constants = matrix[top]
    ratio = torch.where(
        constants > 0,
        margins / constants.clamp_min(torch.finfo(torch.float64).tiny),
        torch.where(margins > 0, math.inf, 0.0).double(),
    )
    return ratio.scatter(1, top[:, None], math.inf).min(dim=1).values


def _round_down(radius: Tensor, like: Tensor) -> Tensor:
    """``radius`` (float64) in the dtype of ``like``, rounded towards 0 (never above the float64 value)."""
    rounded = radius.to(device=like.device, dtype=like.dtype)
    above = rounded.double().cpu() > radius
    return torch.where(above.to(rounded.device), torch.nextafter(rounded, torch.zeros_like(rounded)), rounded)


def certified_radius_and_kind(
    logits: Tensor,
    whole_map_lipschitz: float | None = None,
    per_logit_lipschitz: float | None = None,
    pairwise: PairwiseBounds | None = None,
) -> tuple[Tensor, Tensor]:
    """Certified radius of every point (``(N,)``, dtype of ``logits``) and the kind of the
    certificate it used (``(N,)`` int8, an index of :data:`CERTIFICATE_KINDS`; ties go to
    the lower code; binary models: ``|f| / L`` with the smaller scalar bound).

    ``pairwise[i][j]`` bounds the Lipschitz constant of ``f_i - f_j``
    (:attr:`lipbench.nn.LipschitzUpperBound.pairwise`). It never loses to the other two:
    with ``c_ij = L' ||w_i - w_j||``, ``||w_i - w_j|| = ||W^T (e_i - e_j)|| <= sqrt(2) ||W||_2``
    and ``L = L' ||W||_2`` (the chain's product), so ``c_ij <= sqrt(2) L``; and
    ``||w_i - w_j|| <= ||w_i|| + ||w_j|| <= 2 max_k ||w_k||``, so ``c_ij <= 2 L_logit``
    (``L_logit = L' max_k ||w_k||``). Every margin ``f_t - f_j >= top1 - top2``, hence
    ``min_j (f_t - f_j) / c_tj >= (top1 - top2) / max_j c_tj`` is at least both
    ``(top1 - top2) / (sqrt(2) L)`` and ``(top1 - top2) / (2 L_logit)``, and strictly larger
    when the runner-up's row is closer than the worst case or other classes lag further.
    :func:`lipbench.nn.lipschitz_upper_bound` caps each ``c_ij`` by ``sqrt(2) L`` and
    ``L_i + L_j`` (both valid) so this also holds in floating point.
    """
    if whole_map_lipschitz is None and per_logit_lipschitz is None and pairwise is None:
        raise ValueError("certified_radius needs whole_map_lipschitz, per_logit_lipschitz, pairwise, or several")
    _positive_finite("whole_map_lipschitz", whole_map_lipschitz)
    _positive_finite("per_logit_lipschitz", per_logit_lipschitz)
    logits = logits.detach()
    n = len(logits)
    if logits.ndim == 1 or logits.shape[1] == 1:
        bounds = {code: b for code, b in enumerate((whole_map_lipschitz, per_logit_lipschitz)) if b is not None}
        if not bounds:
            raise ValueError("certified_radius: a single logit needs whole_map_lipschitz or per_logit_lipschitz")
        code = min(bounds, key=lambda c: (bounds[c], c))
        kind = torch.full((n,), code, dtype=torch.int8, device=logits.device)
        return logits.reshape(n).abs() / bounds[code], kind
    top = logits.topk(2, dim=1).values
    margin = top[:, 0] - top[:, 1]
    absent = torch.full_like(margin, -math.inf)
    radii = [
        absent if whole_map_lipschitz is None else margin / (math.sqrt(2.0) * whole_map_lipschitz),
        absent if per_logit_lipschitz is None else margin / (2.0 * per_logit_lipschitz),
        absent if pairwise is None else _round_down(pairwise_radius(logits, pairwise), margin),
    ]
    radius, kind = torch.stack(radii).max(dim=0)
    return radius, kind.to(torch.int8)


def certified_radius(
    logits: Tensor,
    whole_map_lipschitz: float | None = None,
    per_logit_lipschitz: float | None = None,
    pairwise: PairwiseBounds | None = None,
) -> Tensor:
    """Certified radius of every point, shape ``(N,)``: the largest valid certificate.

    ``whole_map_lipschitz`` bounds the whole logit map, ``per_logit_lipschitz`` every
    logit separately (use the max over logits), ``pairwise`` (``(K, K)``) every logit
    difference; give at least one. All must be strict upper bounds
    (:func:`lipbench.nn.lipschitz_upper_bound`), never estimates. See
    :func:`certified_radius_and_kind` (which also says which certificate each point used).
    """
    return certified_radius_and_kind(logits, whole_map_lipschitz, per_logit_lipschitz, pairwise)[0]


def certified_accuracy(radius: Tensor, correct: Tensor, epsilons: Sequence[float]) -> dict[float, float]:
    """Fraction of points correctly classified with a radius strictly above each ``eps``
    (see :func:`lipbench.curves.certified_accuracy_curve`)."""
    values = certified_accuracy_curve(radius.detach().cpu().numpy(), correct.detach().cpu().numpy(), epsilons)
    return {float(eps): float(value) for eps, value in zip(epsilons, values)}
