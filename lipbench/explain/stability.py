"""Stability and concision of a saliency map: max-sensitivity, complexity, sparseness.

- Max-sensitivity (Yeh, Hsieh, Suggala, Inouye, Ravikumar, "On the (in)fidelity and
  sensitivity of explanations", NeurIPS 2019, Definition 3.1):
  ``SENS_MAX(Φ, x, r) = max_{‖δ‖ <= r} ‖Φ(x + δ) - Φ(x)‖``, estimated by Monte Carlo with
  ``samples`` draws of ``δ`` uniform in the L∞ ball of radius ``r`` (captum's
  ``sensitivity_max`` default perturbation), and divided by ``‖Φ(x)‖`` (captum's normalised
  form) so that models with gradients of different scales compare: a 1-Lipschitz model's
  gradient has norm <= 1, an unconstrained one's is unbounded. ``Φ`` is the input gradient of
  the class margin of the class predicted at ``x`` (kept for ``x + δ``, like captum's fixed
  target). 0 for a model whose gradient is constant (linear).
- Complexity (Bhatt, Weller, Moura, IJCAI 2020, section 4.2): the Shannon entropy (natural
  log) of the fractional contribution ``p_i = |a_i| / Σ_j |a_j|`` of the saliency map ``a``;
  ``log P`` for a constant map of ``P`` features (the most complex), 0 for a one-hot map.
- Sparseness (Chalasani, Chen, Chowdhury, Jha, Wu, "Concise explanations of neural networks
  using adversarial training", ICML 2020, section 3; Hurley & Rickard 2009): the Gini index of
  ``|a|`` sorted ascending, ``G = Σ_i (2i - P - 1) a_(i) / (P Σ_i a_(i))``; 0 for a constant
  map, ``(P - 1) / P`` for a one-hot map.

An all-zero map has no fractional contribution: complexity and sparseness are NaN there.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lipbench.explain.saliency import margin_and_gradient

__all__ = ["max_sensitivity", "complexity", "sparseness"]


def max_sensitivity(
    model: nn.Module,
    x: Tensor,
    classes: Tensor,
    gradient: Tensor,
    radius: float,
    samples: int,
    generator: torch.Generator,
    batch_size: int = 256,
) -> Tensor:
    """``(N,)``: ``max_s ‖∇m(x + δ_s) - ∇m(x)‖₂ / ‖∇m(x)‖₂`` over ``samples`` draws of ``δ``
    uniform in ``[-radius, radius]^d`` (Yeh et al. 2019, Definition 3.1; see the module
    docstring); ``inf`` where ``∇m(x) = 0`` but a perturbed gradient is not."""
    n = len(x)
    noise = (torch.rand((n * samples, *x.shape[1:]), generator=generator) * 2 - 1) * radius
    perturbed = x.repeat_interleave(samples, dim=0) + noise.to(x.device, x.dtype)
    _, moved, _ = margin_and_gradient(model, perturbed, classes.repeat_interleave(samples), batch_size)
    change = (moved - gradient.repeat_interleave(samples, dim=0)).reshape(n, samples, -1).norm(dim=2)
    largest = change.amax(dim=1)
    scale = gradient.reshape(n, -1).norm(dim=1)
    return torch.where(scale > 0, largest / scale.clamp_min(torch.finfo(x.dtype).tiny), torch.where(largest > 0, torch.inf, 0.0))


def _fractions(saliency: Tensor) -> Tensor:
    """``|a| / Σ|a|`` per row (float64), NaN rows for all-zero maps."""
    magnitude = saliency.abs().reshape(len(saliency), -1).double()
    total = magnitude.sum(dim=1, keepdim=True)
    return magnitude / torch.where(total > 0, total, torch.nan)


def complexity(saliency: Tensor) -> Tensor:
    """``(N,)``: entropy ``-Σ p_i log p_i`` of ``p = |a| / Σ|a|`` (Bhatt et al. 2020, section 4.2)."""
    p = _fractions(saliency)
    return -torch.where(p > 0, p * p.clamp_min(torch.finfo(p.dtype).tiny).log(), torch.where(p.isnan(), p, 0.0)).sum(dim=1)


def sparseness(saliency: Tensor) -> Tensor:
    """``(N,)``: Gini index of ``|a|`` (Chalasani et al. 2020): ``Σ_i (2i - P - 1) a_(i) / (P Σ a)``."""
    p = torch.sort(_fractions(saliency), dim=1).values
    count = p.shape[1]
    weights = 2 * torch.arange(1, count + 1, dtype=p.dtype, device=p.device) - count - 1
    return (p * weights).sum(dim=1) / count
