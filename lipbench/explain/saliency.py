"""The saliency map of a classifier: the input gradient of its decision margin.

Serrurier, Mamalet, Fel, Béthune, Boissin, "On the explainable properties of 1-Lipschitz
neural networks: an optimal transport perspective" (NeurIPS 2023, arXiv 2206.06854): for an
OT-trained (hKR) 1-Lipschitz network the gradient ``∇f(x)`` has unit norm almost everywhere
and points along the transport plan, towards the nearest point of the decision boundary
(their section 3 and Fig. 2: ``x' = x - f(x) ∇f(x)`` lies on the boundary).

The explained scalar is the *class margin* of the class ``c`` predicted at ``x`` (the decision
rule of :func:`lipbench.nn.certificates.predictions`):

- one logit: ``m(x) = s f(x)`` with ``s = +1`` for class 1 (``f > 0``) and ``-1`` for class 0,
  so ``m(x) ∇m(x) = f(x) ∇f(x)``, the paper's counterfactual step;
- several logits: ``m(x) = f_c(x) - max_{k != c} f_k(x)``, whose gradient at ``x`` is
  ``∇(f_c - f_j)`` for the runner-up ``j``. We explain this margin rather than ``f_c`` alone
  because its zero set is the decision boundary (so the counterfactual along its gradient
  lands on it, as in the binary case), it is the quantity the pairwise certificate bounds
  (``m / c_cj``), and it ignores a constant added to every logit, which ``∇f_c`` does not.

``m(x) > 0`` whenever ``x`` is not on a tie. Images ``(N, C, H, W)`` are explained per pixel
(all channels together, the saliency map of Simonyan et al. 2014: ``max_c |∂m/∂x_c|``);
other inputs per coordinate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "class_margin",
    "predicted_classes",
    "margin_and_gradient",
    "saliency_map",
    "to_features",
    "from_features",
    "replace_features",
]


def predicted_classes(logits: Tensor) -> Tensor:
    """The class predicted from ``logits`` (``f > 0`` for one logit, argmax otherwise)."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def class_margin(logits: Tensor, classes: Tensor) -> Tensor:
    """``m(x)`` of the given ``classes`` (see the module docstring), shape ``(N,)``."""
    if logits.shape[1] == 1:
        sign = classes.to(logits.dtype) * 2 - 1
        return sign * logits[:, 0]
    own = logits.gather(1, classes[:, None])[:, 0]
    others = logits.scatter(1, classes[:, None], float("-inf")).max(dim=1).values
    return own - others


def margin_and_gradient(
    model: nn.Module, x: Tensor, classes: Tensor | None = None, batch_size: int = 256
) -> tuple[Tensor, Tensor, Tensor]:
    """``(m(x), ∇m(x), classes)`` for every point, in batches; ``classes`` defaults to the
    classes predicted at ``x`` (pass them to explain the same class at perturbed points)."""
    margins, gradients, chosen = [], [], []
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(chunk)
            target = predicted_classes(logits.detach()) if classes is None else classes[start : start + batch_size]
            margin = class_margin(logits, target)
            (gradient,) = torch.autograd.grad(margin.sum(), chunk)
        margins.append(margin.detach())
        gradients.append(gradient.detach())
        chosen.append(target)
    return torch.cat(margins), torch.cat(gradients), torch.cat(chosen)


def to_features(x: Tensor) -> Tensor:
    """``(N, P, C)``: the explained features (pixels of an image, else coordinates) with their channels."""
    if x.ndim == 4:
        return x.permute(0, 2, 3, 1).reshape(len(x), -1, x.shape[1])
    return x.reshape(len(x), -1, 1)


def from_features(features: Tensor, shape: torch.Size) -> Tensor:
    """The inverse of :func:`to_features` for inputs of ``shape`` (``(N, ...)``)."""
    if len(shape) == 4:
        n, c, h, w = shape
        return features.reshape(n, h, w, c).permute(0, 3, 1, 2)
    return features.reshape(shape)


def saliency_map(gradient: Tensor) -> Tensor:
    """``(N, P)``: per feature, the largest absolute gradient over its channels."""
    return to_features(gradient).abs().amax(dim=2)


def replace_features(x: Tensor, replaced: Tensor, baseline: float | Tensor) -> Tensor:
    """``x`` with the features where ``replaced`` (``(N, P)`` bool) is true set to ``baseline``
    (a number, or a tensor shaped like ``x``)."""
    features = to_features(x)
    base = to_features(baseline) if isinstance(baseline, Tensor) else torch.full_like(features, float(baseline))
    return from_features(torch.where(replaced[:, :, None], base, features), x.shape)
