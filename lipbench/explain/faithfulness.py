"""Faithfulness of a saliency map: deletion and insertion curves and µ-fidelity.

- Deletion / insertion (Petsiuk, Das, Saenko, "RISE", BMVC 2018, section 4.1): rank the
  features by the saliency map (largest first, ties by feature index); after ``k`` of ``P``
  features are set to the *baseline* (deletion, from ``x``) or copied from ``x`` into the
  baseline image (insertion), record the explained score. RISE scores the class probability;
  the margin-trained models here are not calibrated, so the score is the class margin
  ``m_c`` of :mod:`lipbench.explain.saliency`, normalised by its value at ``x``:
  ``s_k = m_c(x_k) / m_c(x)`` (1 at the start of deletion and the end of insertion; it may go
  negative once the class changes). The curve is sampled at ``k_i = round(i P / steps)``,
  ``i = 0..steps``, and its area is the trapezoid rule over the deleted fraction ``k / P``
  (as in Xplique's ``Deletion``/``Insertion``). Deletion: lower is more faithful; insertion:
  higher.
- µ-fidelity (Bhatt, Weller, Moura, "Evaluating and aggregating feature-based model
  explanations", IJCAI 2020, Definition 3): the Pearson correlation, over random subsets
  ``S`` of ``|S|`` features, between ``Σ_{i∈S} g_i(x)`` (the attribution of the subset:
  the gradient summed over its features and channels) and
  ``m_c(x) - m_c(x_[S = baseline])``. ``subsets`` subsets of the fixed size ``|S|`` are drawn
  per point from a seeded generator; a point whose two series have no variance scores 0 (as
  in Xplique's ``MuFidelity``, which uses Spearman's correlation where Bhatt et al. use
  Pearson's: we follow the paper).

The *baseline* is one constant (``0.0``: a black image for data in ``[0, 1]``), the "zero
baseline" of Serrurier et al. (2023, Table 1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lipbench.explain.saliency import class_margin, replace_features, to_features

__all__ = ["score_inputs", "feature_ranks", "deletion_curves", "curve_area", "mu_fidelity"]


@torch.no_grad()
def score_inputs(model: nn.Module, inputs: Tensor, classes: Tensor, batch_size: int = 256) -> Tensor:
    """``m_c`` of every input (``classes`` per input), in batches."""
    scores = [
        class_margin(model(inputs[start : start + batch_size]), classes[start : start + batch_size])
        for start in range(0, len(inputs), batch_size)
    ]
    return torch.cat(scores) if scores else inputs.new_zeros(0)


def feature_ranks(saliency: Tensor) -> Tensor:
    """``(N, P)``: the rank of each feature in the saliency map (0: the most salient; ties
    broken by feature index, so the ranking is deterministic)."""
    order = torch.sort(-saliency, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def deletion_curves(
    model: nn.Module,
    x: Tensor,
    classes: Tensor,
    saliency: Tensor,
    baseline: float,
    steps: int,
    insertion: bool = False,
    batch_size: int = 256,
) -> Tensor:
    """``(N, steps + 1)``: ``m_c(x_k) / m_c(x)`` after deleting (or inserting) the ``k_i`` most
    salient features, ``k_i = round(i P / steps)`` (RISE, section 4.1; see the module docstring).
    Points with ``m_c(x) = 0`` (exact ties) give NaN rows."""
    ranks = feature_ranks(saliency)
    features = ranks.shape[1]
    counts = [round(i * features / steps) for i in range(steps + 1)]
    inputs = []
    for count in counts:
        moved = ranks < count
        inputs.append(replace_features(x, ~moved, baseline) if insertion else replace_features(x, moved, baseline))
    stacked = torch.stack(inputs, dim=1).reshape(len(x) * len(counts), *x.shape[1:])
    scores = score_inputs(model, stacked, classes.repeat_interleave(len(counts)), batch_size).reshape(len(x), len(counts))
    start = score_inputs(model, x, classes, batch_size)
    return scores / torch.where(start == 0, torch.nan, start)[:, None]


def curve_area(curves: Tensor) -> Tensor:
    """``(N,)``: trapezoid area under each curve sampled at equal steps of ``[0, 1]``."""
    return ((curves[:, :-1] + curves[:, 1:]) / 2).mean(dim=1)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation; 0 where either row has no variance."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    scale = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(scale > 0, (a * b).sum(dim=1) / scale.clamp_min(torch.finfo(a.dtype).tiny), 0.0)


def mu_fidelity(
    model: nn.Module,
    x: Tensor,
    classes: Tensor,
    gradient: Tensor,
    baseline: float,
    subset_size: int,
    subsets: int,
    generator: torch.Generator,
    batch_size: int = 256,
) -> Tensor:
    """``(N,)``: µ-fidelity of the attribution ``gradient`` (Bhatt et al. 2020, Definition 3):
    Pearson's correlation over ``subsets`` random subsets ``S`` of ``subset_size`` features
    between ``Σ_{i∈S} g_i`` and ``m_c(x) - m_c(x_[S = baseline])``."""
    n, features = len(x), to_features(x).shape[1]
    if not 1 <= subset_size <= features:
        raise ValueError(f"mu_fidelity: subset_size must be in [1, {features}] (the number of features), got {subset_size}")
    draws = torch.rand(n, subsets, features, generator=generator).argsort(dim=2).argsort(dim=2) < subset_size
    draws = draws.to(x.device)
    attribution = to_features(gradient).sum(dim=2)  # (N, P)
    subset_attribution = (attribution[:, None, :] * draws).sum(dim=2).double()
    repeated = x.repeat_interleave(subsets, dim=0)
    degraded = replace_features(repeated, draws.reshape(n * subsets, features), baseline)
    drop = score_inputs(model, x, classes, batch_size).repeat_interleave(subsets) - score_inputs(
        model, degraded, classes.repeat_interleave(subsets), batch_size
    )
    return _pearson(subset_attribution, drop.reshape(n, subsets).double()).to(x.dtype)
