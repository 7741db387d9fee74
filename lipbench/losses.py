"""Losses of the paper and its baselines, in the paper's convention (alpha = λ, margin = m).

Labels are class indices: ``{0, 1}`` for binary problems (class 1 is ``P+``, the side
where ``f > 0``) and ``{0..K-1}`` for multiclass. Binary scores have shape ``(N,)`` or
``(N, 1)``. Expectations over ``P+`` / ``P-`` are class-conditional means over the
batch; a class absent from the batch contributes 0.

Mapping to the authors' libraries (checked by tests against deel-torchlip):

* deel-lip (Keras): ``HKR(alpha=λ, min_margin=2m)`` is ``-KR + λ·hinge`` with the hinge
  at ``min_margin / 2 = m``, i.e. our ``hkr_loss(alpha=λ, margin=m)``.
* deel-torchlip: ``HKRLoss(alpha=λ/(1+λ), min_margin=2m)`` equals
  ``hkr_loss(alpha=λ, margin=m) / (1+λ)``. Multiclass:
  ``HKRMulticlassLoss(alpha=λ/(1+λ), min_margin=2m)`` on one-hot targets equals
  ``hkr_multiclass_loss(alpha=λ, margin=m, positive_hinge_weight=K-1) / (K (1+λ))``
  (deel-torchlip averages over classes and up-weights the true class's hinge by K-1).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "kantorovich_rubinstein",
    "kr_loss",
    "hinge_loss",
    "hkr_loss",
    "hkr_multiclass_loss",
    "multiclass_hinge_loss",
    "cross_entropy_loss",
    "LOSSES",
    "make_loss",
]


def _binary_scores(scores: Tensor) -> Tensor:
    if scores.ndim == 2 and scores.shape[1] == 1:
        return scores[:, 0]
    if scores.ndim != 1:
        raise ValueError(f"binary losses expect scores of shape (N,) or (N, 1), got {tuple(scores.shape)}")
    return scores


def _binary_signs(labels: Tensor, dtype: torch.dtype) -> Tensor:
    """Class indices {0, 1} as signs {-1, +1}; anything else is an error, never remapped."""
    if labels.numel() and not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("binary losses expect class-index labels in {0, 1} (1 = P+, where f > 0)")
    return labels.to(dtype) * 2 - 1


def _class_means(values: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """Means of ``values`` over positive and negative entries along dim 0 (0 when empty)."""
    positive = positive.to(values.dtype)
    negative = 1 - positive
    mean_positive = (values * positive).sum(0) / positive.sum(0).clamp_min(1)
    mean_negative = (values * negative).sum(0) / negative.sum(0).clamp_min(1)
    return mean_positive, mean_negative


def kantorovich_rubinstein(scores: Tensor, labels: Tensor) -> Tensor:
    """Batch estimate of ``E_{P+}[f] - E_{P-}[f]`` (eq. 1b): the dual of W1 for 1-Lipschitz f."""
    scores = _binary_scores(scores)
    _binary_signs(labels, scores.dtype)
    mean_positive, mean_negative = _class_means(scores, labels == 1)
    return mean_positive - mean_negative


def kr_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Vanilla Kantorovich-Rubinstein loss ``E_{P-}[f] - E_{P+}[f]`` (minimised; eq. 1b)."""
    return -kantorovich_rubinstein(scores, labels)


def hinge_loss(scores: Tensor, labels: Tensor, margin: float = 1.0) -> Tensor:
    """Binary hinge ``E[(m - y f(x))+]`` with ``y`` in {-1, +1}."""
    scores = _binary_scores(scores)
    signs = _binary_signs(labels, scores.dtype)
    return F.relu(margin - signs * scores).mean()


def hkr_loss(scores: Tensor, labels: Tensor, alpha: float = 50.0, margin: float = 1.0) -> Tensor:
    """Binary hKR (eq. 5): ``E_{P-}[f] - E_{P+}[f] + λ E[(m - y f(x))+]`` with λ = ``alpha``."""
    return kr_loss(scores, labels) + alpha * hinge_loss(scores, labels, margin)


def _check_class_labels(logits: Tensor, labels: Tensor) -> None:
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"multiclass losses expect logits of shape (N, K>=2), got {tuple(logits.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(f"labels must be class indices in [0, {logits.shape[1] - 1}]")


def hkr_multiclass_loss(
    logits: Tensor,
    labels: Tensor,
    alpha: float = 50.0,
    margin: float = 1.0,
    positive_hinge_weight: float = 1.0,
) -> Tensor:
    """Multiclass hKR (eq. 12): the sum over classes k of one-vs-all binary hKR terms,
    ``E_{not k}[f_k] - E_{k}[f_k] + λ E[w (m - y_k f_k(x))+]`` with ``y_k = +1`` on class k.

    ``positive_hinge_weight`` (``w`` on the true class, 1 in the paper) balances the one
    positive against the K-1 negatives; deel-torchlip uses K-1.
    """
    _check_class_labels(logits, labels)
    one_hot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    mean_positive, mean_negative = _class_means(logits, one_hot)
    kr_terms = mean_negative - mean_positive
    signs = one_hot * 2 - 1
    hinge = F.relu(margin - signs * logits)
    if positive_hinge_weight != 1.0:
        hinge = hinge * (1 + (positive_hinge_weight - 1) * one_hot)
    return kr_terms.sum() + alpha * hinge.mean(0).sum()


def multiclass_hinge_loss(logits: Tensor, labels: Tensor, margin: float = 1.0) -> Tensor:
    """Multiclass hinge with margin m (GNP_hin): ``E[sum_{j != y} (m - (f_y - f_j))+]``.

    Equals ``K * F.multi_margin_loss(logits, labels, margin=m)``.
    """
    _check_class_labels(logits, labels)
    true_logit = logits.gather(1, labels[:, None])
    violations = F.relu(margin - true_logit + logits)
    violations = violations.scatter(1, labels[:, None], 0.0)
    return violations.sum(1).mean()


def cross_entropy_loss(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """Cross-entropy (log loss) on ``temperature * logits``; binary single-logit models use
    the logistic loss. 1-Lipschitz networks have small logits, so a temperature > 1 is
    common for 1LIP_log / GNP_log."""
    if logits.ndim == 1 or logits.shape[1] == 1:
        scores = _binary_scores(logits)
        _binary_signs(labels, scores.dtype)
        return F.binary_cross_entropy_with_logits(temperature * scores, labels.to(scores.dtype))
    _check_class_labels(logits, labels)
    return F.cross_entropy(temperature * logits, labels)


# name -> (binary function, multiclass function); parameters are the functions' keywords.
LOSSES: dict[str, tuple[Callable[..., Tensor] | None, Callable[..., Tensor] | None]] = {
    "hkr": (hkr_loss, hkr_multiclass_loss),
    "kr": (kr_loss, None),
    "hinge": (hinge_loss, multiclass_hinge_loss),
    "cross_entropy": (cross_entropy_loss, cross_entropy_loss),
}


def make_loss(name: str, binary: bool, **params: float) -> Callable[[Tensor, Tensor], Tensor]:
    """``loss(outputs, labels)`` for a loss name and problem type, parameters checked up front."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    function = LOSSES[name][0 if binary else 1]
    if function is None:
        kind = "binary" if binary else "multiclass"
        raise ValueError(f"loss {name!r} has no {kind} form; use it on {'multiclass' if binary else 'binary'} problems")
    accepted = set(inspect.signature(function).parameters) - {"scores", "logits", "labels"}
    unknown = set(params) - accepted
    if unknown:
        raise ValueError(
            f"{'binary' if binary else 'multiclass'} loss {name!r} does not take {', '.join(sorted(unknown))}; "
            f"it accepts: {', '.join(sorted(accepted)) or 'no parameters'}"
        )
    for key, value in params.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"loss parameter {key} must be a number, got {value!r}")
    if params.get("positive_hinge_weight", 1.0) <= 0 or params.get("temperature", 1.0) <= 0:
        raise ValueError("positive_hinge_weight and temperature must be > 0")
    if params.get("alpha", 0.0) < 0:
        raise ValueError("alpha (λ) must be >= 0")

    def loss(outputs: Tensor, labels: Tensor) -> Tensor:
        return function(outputs, labels, **params)

    loss.__name__ = f"{name}_loss"
    return loss
