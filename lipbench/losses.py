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

Data-parallel training (``reduce``). Every loss takes an optional ``reduce``: a callable
that sums a *detached count tensor* over the ranks of a process group (``None``: one
process, the loss is exactly the single-process formula). With ``reduce``, each rank
computes its piece of the loss on its shard ``B_r`` of the global batch ``B`` from
*local sums* divided by *global normalisers*: the class counts ``n+``, ``n-`` (per class
for multiclass losses) and the batch size ``n`` are ``reduce``-d, e.g. for binary hKR

    ℓ_r = Σ_{i∈B_r, y_i=0} f_i / n-  -  Σ_{i∈B_r, y_i=1} f_i / n+  +  λ Σ_{i∈B_r} (m - y_i f_i)+ / n.

Every term of the loss on ``B`` is such a sum divided by a count of the whole batch, so
``Σ_r ℓ_r`` is *exactly* the loss of one process on the concatenated batch, and so is
the sum of the gradients: ``∇ L(B) = Σ_r ∇ ℓ_r``. Only the counts go through ``reduce``
(they carry no gradient), so no collective sits inside the autograd graph. See
:mod:`lipbench.train.distributed` for how the trainer turns this into DDP gradients
(``W · ℓ_r`` is backpropagated, the loss value reported is the all-reduced ``Σ_r ℓ_r``).
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
    "Reduce",
    "make_loss",
]

#: Sums a detached tensor of counts over the ranks of a process group (returns a new
#: tensor; the identity with one process). See the module docstring.
Reduce = Callable[[Tensor], Tensor]


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


def _class_counts(positive: Tensor, reduce: Reduce | None) -> Tensor:
    """``[count of positives, count of negatives]`` along dim 0 (stacked on a new dim 0),
    summed over ranks by ``reduce``: the class-conditional normalisers of the whole batch."""
    positive = positive.detach()
    counts = torch.stack([positive.sum(0), (1 - positive).sum(0)])
    return counts if reduce is None else reduce(counts)


def _class_means(
    values: Tensor, positive: Tensor, reduce: Reduce | None = None, counts: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Means of ``values`` over positive and negative entries along dim 0 (0 when empty).

    With ``reduce`` the sums are this rank's and the counts the whole batch's (see the
    module docstring); ``counts`` passes counts already computed by :func:`_class_counts`.
    """
    positive = positive.to(values.dtype)
    negative = 1 - positive
    if counts is None:
        counts = _class_counts(positive, reduce)
    mean_positive = (values * positive).sum(0) / counts[0].clamp_min(1)
    mean_negative = (values * negative).sum(0) / counts[1].clamp_min(1)
    return mean_positive, mean_negative


def _batch_size(labels: Tensor, dtype: torch.dtype, reduce: Reduce) -> Tensor:
    """The number of examples of the whole batch (``reduce``-d), as a tensor."""
    return reduce(torch.full((), float(len(labels)), dtype=dtype, device=labels.device))


def _mean(values: Tensor, size: Tensor | None) -> Tensor:
    """Mean over dim 0 of per-example terms: ``values.mean(0)`` with one process (exactly
    today's formula), the local sum over the global ``size`` otherwise."""
    if size is None:
        return values.mean(0)
    return values.sum(0) / size.clamp_min(1)


def kantorovich_rubinstein(scores: Tensor, labels: Tensor, reduce: Reduce | None = None) -> Tensor:
    """Batch estimate of ``E_{P+}[f] - E_{P-}[f]`` (eq. 1b): the dual of W1 for 1-Lipschitz f."""
    scores = _binary_scores(scores)
    _binary_signs(labels, scores.dtype)
    mean_positive, mean_negative = _class_means(scores, labels == 1, reduce)
    return mean_positive - mean_negative


def kr_loss(scores: Tensor, labels: Tensor, reduce: Reduce | None = None) -> Tensor:
    """Vanilla Kantorovich-Rubinstein loss ``E_{P-}[f] - E_{P+}[f]`` (minimised; eq. 1b)."""
    return -kantorovich_rubinstein(scores, labels, reduce)


def hinge_loss(scores: Tensor, labels: Tensor, margin: float = 1.0, reduce: Reduce | None = None) -> Tensor:
    """Binary hinge ``E[(m - y f(x))+]`` with ``y`` in {-1, +1}."""
    scores = _binary_scores(scores)
    signs = _binary_signs(labels, scores.dtype)
    size = None if reduce is None else _batch_size(labels, scores.dtype, reduce)
    return _mean(F.relu(margin - signs * scores), size)


def hkr_loss(scores: Tensor, labels: Tensor, alpha: float = 50.0, margin: float = 1.0, reduce: Reduce | None = None) -> Tensor:
    """Binary hKR (eq. 5): ``E_{P-}[f] - E_{P+}[f] + λ E[(m - y f(x))+]`` with λ = ``alpha``.

    With ``reduce``, one call sums ``[n+, n-]`` over ranks; ``n = n+ + n-``.
    """
    if reduce is None:
        return kr_loss(scores, labels) + alpha * hinge_loss(scores, labels, margin)
    scores = _binary_scores(scores)
    signs = _binary_signs(labels, scores.dtype)
    counts = _class_counts((labels == 1).to(scores.dtype), reduce)
    mean_positive, mean_negative = _class_means(scores, labels == 1, counts=counts)
    hinge = _mean(F.relu(margin - signs * scores), counts.sum())
    return -(mean_positive - mean_negative) + alpha * hinge


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
    reduce: Reduce | None = None,
) -> Tensor:
    """Multiclass hKR (eq. 12): the sum over classes k of one-vs-all binary hKR terms,
    ``E_{not k}[f_k] - E_{k}[f_k] + λ E[w (m - y_k f_k(x))+]`` with ``y_k = +1`` on class k.

    ``positive_hinge_weight`` (``w`` on the true class, 1 in the paper) balances the one
    positive against the K-1 negatives; deel-torchlip uses K-1. With ``reduce``, one call
    sums the ``(2, K)`` class counts over ranks; the batch size is ``n_k + n_not_k``.
    """
    _check_class_labels(logits, labels)
    one_hot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    counts = _class_counts(one_hot, reduce)
    mean_positive, mean_negative = _class_means(logits, one_hot, counts=counts)
    kr_terms = mean_negative - mean_positive
    signs = one_hot * 2 - 1
    hinge = F.relu(margin - signs * logits)
    if positive_hinge_weight != 1.0:
        hinge = hinge * (1 + (positive_hinge_weight - 1) * one_hot)
    size = None if reduce is None else counts[:, 0].sum()
    return kr_terms.sum() + alpha * _mean(hinge, size).sum()


def multiclass_hinge_loss(logits: Tensor, labels: Tensor, margin: float = 1.0, reduce: Reduce | None = None) -> Tensor:
    """Multiclass hinge with margin m (GNP_hin): ``E[sum_{j != y} (m - (f_y - f_j))+]``.

    Equals ``K * F.multi_margin_loss(logits, labels, margin=m)``.
    """
    _check_class_labels(logits, labels)
    true_logit = logits.gather(1, labels[:, None])
    violations = F.relu(margin - true_logit + logits)
    violations = violations.scatter(1, labels[:, None], 0.0)
    size = None if reduce is None else _batch_size(labels, logits.dtype, reduce)
    return _mean(violations.sum(1), size)


def cross_entropy_loss(
    logits: Tensor, labels: Tensor, temperature: float = 1.0, offset: float = 0.0, reduce: Reduce | None = None
) -> Tensor:
    """Cross-entropy (log loss) on ``temperature * (logits - offset * onehot(labels))``; binary
    single-logit models use the logistic loss on ``temperature * (f - offset * (2y - 1))``.

    1-Lipschitz networks have small logits, so a temperature > 1 is common for 1LIP_log /
    GNP_log. The offset is the certificate-aware cross-entropy of Prach & Lampert (ECCV 2022)
    used by Prach et al. (CVPR 2024) for every layer family: the true logit must win by
    ``offset`` before the loss is small (their ``LipCrossEntropyLoss(margin, temperature)``
    divides by its temperature: theirs 0.25 is our 4.0).
    """
    if logits.ndim == 1 or logits.shape[1] == 1:
        scores = _binary_scores(logits)
        _binary_signs(labels, scores.dtype)
        targets = labels.to(scores.dtype)
        if offset:
            scores = scores - offset * (2 * targets - 1)
        if reduce is None:
            return F.binary_cross_entropy_with_logits(temperature * scores, targets)
        total = F.binary_cross_entropy_with_logits(temperature * scores, targets, reduction="sum")
        return total / _batch_size(labels, scores.dtype, reduce).clamp_min(1)
    _check_class_labels(logits, labels)
    if offset:
        logits = logits - offset * F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    if reduce is None:
        return F.cross_entropy(temperature * logits, labels)
    total = F.cross_entropy(temperature * logits, labels, reduction="sum")
    return total / _batch_size(labels, logits.dtype, reduce).clamp_min(1)


# name -> (binary function, multiclass function); parameters are the functions' keywords.
LOSSES: dict[str, tuple[Callable[..., Tensor] | None, Callable[..., Tensor] | None]] = {
    "hkr": (hkr_loss, hkr_multiclass_loss),
    "kr": (kr_loss, None),
    "hinge": (hinge_loss, multiclass_hinge_loss),
    "cross_entropy": (cross_entropy_loss, cross_entropy_loss),
}


def make_loss(name: str, binary: bool, reduce: Reduce | None = None, **params: float) -> Callable[[Tensor, Tensor], Tensor]:
    """``loss(outputs, labels)`` for a loss name and problem type, parameters checked up front.

    ``reduce`` (keyword): the rank-summing reducer of data-parallel training, passed to the
    loss function so that its normalisers are those of the whole global batch (see the
    module docstring); ``None`` (default): the single-process loss, unchanged.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    function = LOSSES[name][0 if binary else 1]
    if function is None:
        kind = "binary" if binary else "multiclass"
        raise ValueError(f"loss {name!r} has no {kind} form; use it on {'multiclass' if binary else 'binary'} problems")
    accepted = set(inspect.signature(function).parameters) - {"scores", "logits", "labels", "reduce"}
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
    if params.get("offset", 0.0) < 0:
        raise ValueError("offset must be >= 0")

    def loss(outputs: Tensor, labels: Tensor) -> Tensor:
        return function(outputs, labels, **params, reduce=reduce)

    loss.__name__ = f"{name}_loss"
    return loss
