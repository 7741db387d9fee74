"""ARMOR_D's outer losses (Birrell & Ebrahimi, "Optimal Transport Regularized Divergences:
Application to Adversarial Robustness", arXiv 2309.03791): pure functions of per-sample
losses, transport costs and the dual variables λ > 0 and ν.

ARMOR_D minimises the worst expected loss over a neighbourhood ``D^c(Q‖P_n) <= ε`` of the
empirical distribution, where ``D^c(Q‖P) = inf_η {D(η‖P) + C(η, Q)}`` is the infimal
convolution of an information divergence ``D`` with an optimal-transport cost ``C`` (OT
cost function ``c(x, x̃) = κ‖x − x̃‖₂^q`` here). Its dual, for an f-divergence, is

    inf_{λ>0, ρ} { ελ + λρ + λ E_P[ f*( sup_x̃ {L(x̃)/λ − c(x, x̃)} − ρ ) ] },

and for KL, whose ``inf_ρ`` has a closed form, ``inf_λ {ελ + λ log E_P exp(sup_x̃ {L(x̃)/λ −
c(x, x̃)})}``. With ``x̃_i`` the inner maximiser of sample ``i``, ``L_i = L(x̃_i)`` and ``c_i =
c(x_i, x̃_i)`` (and ``ν = λρ``) the batch objectives are those below.

Equation numbers: the paper's text beyond its abstract could not be reached from this
session, so no equation number is cited. The formulas were derived from the dual above and
checked against the authors' code (github.com/star-ailab/ARMOR, ``min_loss_KL_symmetric`` and
``min_loss_fdiv_symmetric``): in particular the cost ``c_i`` sits *inside* ``f*_α``'s argument
in the α variant, exactly as in the KL one (``f*_α((L_i − ν)/λ − c_i)``), which is what the
dual gives and what the authors' code computes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "per_sample_cross_entropy",
    "transport_cost",
    "armor_kl_loss",
    "armor_kl_weights",
    "f_star_alpha",
    "armor_alpha_loss",
    "armor_alpha_weights",
]


def per_sample_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of each example, shape ``(N,)``; single-logit binary models (class 1
    where ``f > 0``) use the logistic loss, as :func:`lipbench.losses.cross_entropy_loss`."""
    if logits.ndim == 1 or logits.shape[1] == 1:
        scores = logits.reshape(-1)
        if labels.numel() and not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError("binary losses expect class-index labels in {0, 1} (1 = P+, where f > 0)")
        return F.binary_cross_entropy_with_logits(scores, labels.to(scores.dtype), reduction="none")
    return F.cross_entropy(logits, labels, reduction="none")


def transport_cost(x: Tensor, moved: Tensor, weight: float, power: float) -> Tensor:
    """The OT cost function ``c(x, x̃) = κ ‖x − x̃‖₂^q`` of each example, shape ``(N,)``.

    The norm is clamped below at 1e-12 before the power, so the gradient at ``x̃ = x`` is 0
    (not NaN) for every ``q >= 1``."""
    distance = torch.linalg.vector_norm((moved - x).flatten(1), dim=1)
    return weight * distance.clamp_min(1e-12) ** power


def armor_kl_loss(losses: Tensor, costs: Tensor, lam: Tensor, radius: float) -> Tensor:
    """ARMOR_KL's batch objective ``ελ + λ log (1/N) Σ_i exp(L_i/λ − c_i)`` (logsumexp).

    Its gradient with respect to ``L_i`` is :func:`armor_kl_weights`: the adversary's
    re-weighting of the batch."""
    scores = losses / lam - costs
    return radius * lam + lam * (torch.logsumexp(scores, dim=0) - math.log(len(losses)))


def armor_kl_weights(losses: Tensor, costs: Tensor, lam: Tensor) -> Tensor:
    """``softmax_i(L_i/λ − c_i)``: the KL adversary's weights (they sum to 1; uniform is 1/N)."""
    return torch.softmax(losses / lam - costs, dim=0)


def f_star_alpha(y: Tensor, alpha: float) -> Tensor:
    """Legendre transform of the α-divergence's ``f_α(t) = (t^α − 1)/(α(α − 1))``, α > 1:
    ``f*_α(y) = α⁻¹ (α − 1)^{α/(α−1)} max(y, 0)^{α/(α−1)} + 1/(α(α − 1))``."""
    exponent = alpha / (alpha - 1)
    return (alpha - 1) ** exponent / alpha * torch.relu(y) ** exponent + 1 / (alpha * (alpha - 1))


def armor_alpha_loss(losses: Tensor, costs: Tensor, lam: Tensor, nu: Tensor, radius: float, alpha: float) -> Tensor:
    """ARMOR_α's batch objective ``ελ + ν + λ (1/N) Σ_i f*_α((L_i − ν)/λ − c_i)``.

    Its gradient with respect to ``L_i`` is :func:`armor_alpha_weights` / N."""
    return radius * lam + nu + lam * f_star_alpha((losses - nu) / lam - costs, alpha).mean()


def armor_alpha_weights(losses: Tensor, costs: Tensor, lam: Tensor, nu: Tensor, alpha: float) -> Tensor:
    """``f*_α'(y_i) = ((α − 1) y_i)₊^{1/(α−1)}`` with ``y_i = (L_i − ν)/λ − c_i``: the α
    adversary's density ``dQ/dP`` at each example (mean 1 when ν is optimal; samples with
    ``y_i <= 0`` get weight 0)."""
    y = (losses - nu) / lam - costs
    return torch.relu((alpha - 1) * y) ** (1 / (alpha - 1))
