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

λ by bisection (:func:`armor_kl_optimal_lambda`, KL only): for fixed ``x̃_i`` the KL batch
objective ``g(λ) = ελ + λ log (1/N) Σ_i exp(L_i/λ − c_i)`` is convex in λ > 0 (the
perspective of a log-sum-exp), so its minimiser over an interval is found by bisection on
``g'``. ARMOR_D on top of TRADES uses :func:`per_sample_trades_kl` as its per-sample loss.
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
    "armor_kl_lambda_derivative",
    "armor_kl_optimal_lambda",
    "per_sample_trades_kl",
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


def per_sample_trades_kl(clean_logits: Tensor, logits: Tensor) -> Tensor:
    """TRADES's regulariser per example (Zhang et al., ICML 2019, eq. 5): ``KL(p(x) ‖ p(x̃))``
    with ``p = softmax`` of ``clean_logits`` (``f(x)``) and of ``logits`` (``f(x̃)``), shape
    ``(N,)``. Single-logit binary models use the Bernoulli KL between ``sigmoid`` probabilities.
    Computed in log space; clamped at 0 against rounding, so it is >= 0 and exactly 0 at x̃ = x."""
    if clean_logits.ndim == 1 or clean_logits.shape[1] == 1:
        clean, moved = clean_logits.reshape(-1), logits.reshape(-1)
        p = torch.sigmoid(clean)
        kl = p * (F.logsigmoid(clean) - F.logsigmoid(moved)) + (1 - p) * (F.logsigmoid(-clean) - F.logsigmoid(-moved))
    else:
        log_p, log_q = F.log_softmax(clean_logits, dim=1), F.log_softmax(logits, dim=1)
        kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return kl.clamp_min(0.0)


def _winning_candidates(losses: Tensor, costs: Tensor, lam: Tensor, clean_losses: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per example, ``(L, c)`` of the candidate with the larger ``L/λ − c`` among ``x̃_i`` and,
    when ``clean_losses`` is given, ``x_i`` itself (loss ``L⁰_i``, cost 0)."""
    if clean_losses is None:
        return losses, costs
    adversarial = losses / lam - costs >= clean_losses / lam
    return torch.where(adversarial, losses, clean_losses), torch.where(adversarial, costs, torch.zeros_like(costs))


def armor_kl_lambda_derivative(
    losses: Tensor, costs: Tensor, lam: Tensor, radius: float, clean_losses: Tensor | None = None
) -> Tensor:
    """``g'(λ) = ε + log (1/N) Σ_i exp(z_i) − Σ_i softmax(z)_i L_i/λ`` with ``z_i = L_i/λ − c_i``:
    the derivative of :func:`armor_kl_loss` in λ at fixed ``L``, ``c`` (logsumexp, softmax);
    with ``clean_losses``, each example's better candidate (:func:`armor_kl_optimal_lambda`)."""
    losses, costs = _winning_candidates(losses, costs, lam, clean_losses)
    scores = losses / lam - costs
    weights = torch.softmax(scores, dim=0)
    return radius + torch.logsumexp(scores, dim=0) - math.log(len(losses)) - (weights * losses).sum() / lam


@torch.no_grad()
def armor_kl_optimal_lambda(
    losses: Tensor,
    costs: Tensor,
    radius: float,
    low: float = 1e-3,
    high: float = 1e3,
    iterations: int = 40,
    clean_losses: Tensor | None = None,
) -> Tensor:
    """``λ* = argmin_{λ ∈ [low, high]} g(λ)``, ``g(λ) = ελ + λ log (1/N) Σ_i exp(L_i/λ − c_i)``:
    the KL variant's dual (module docstring) minimised over λ for this batch's fixed ``L_i``
    and ``c_i``. A 0-d tensor without gradient, in the losses' dtype (at least float32).

    ``g`` is convex: ``λ ↦ λ LSE(L/λ − c)`` is the perspective of the convex log-sum-exp, plus
    the linear ``ελ``. So ``g'`` (:func:`armor_kl_lambda_derivative`) is non-decreasing, and
    ``iterations`` bisection steps in ``log λ`` on its sign bracket the minimiser (40 steps
    shrink ``[1e-3, 1e3]`` to a relative width ~1e-11). When ``g'`` does not change sign on
    the interval (``g'(low) >= 0`` or ``g'(high) <= 0``) the minimum is at an end, and the end
    where ``g`` is smaller is returned, exactly.

    ``clean_losses`` (``L⁰_i``, the loss at ``x_i``): the dual's inner ``sup_x̃ {L(x̃)/λ − c}``
    is taken over the two candidates ``{x̃_i, x_i}``, ``z_i = max(L_i/λ − c_i, L⁰_i/λ)``. ``x̃_i``
    was found with the previous λ; at a larger λ its cost can outweigh its loss, and with
    ``x̃_i`` alone ``g`` may then fall without end (``g'(∞) = ε + log mean exp(−c) < 0``),
    sending λ* to ``high``. With ``x_i`` among the candidates ``z_i >= L⁰_i/λ``, so ``g'(∞) =
    ε > 0`` and the minimiser is finite. ``g`` stays convex: LSE is monotone, so ``g`` is the
    maximum over candidate choices of convex functions.

    Envelope theorem: ``min_λ g(λ; θ)`` has the gradient w.r.t. the network θ of ``g(λ; θ)``
    at fixed ``λ = λ*``, so the caller uses λ* detached in :func:`armor_kl_loss`. No host
    synchronisation: the bisection runs on tensors (``torch.where``).
    """
    if len(losses) == 0 or not 0 < low < high:
        raise ValueError(f"armor_kl_optimal_lambda: needs losses and 0 < low < high, got {len(losses)}, {low}, {high}")
    dtype = torch.promote_types(losses.dtype, torch.float32)
    losses, costs = losses.detach().to(dtype), costs.detach().to(dtype)
    clean = None if clean_losses is None else clean_losses.detach().to(dtype)
    ends = torch.tensor([low, high], dtype=dtype, device=losses.device)
    log_low, log_high = ends.log().unbind()
    for _ in range(iterations):
        middle = (log_low + log_high) / 2
        rising = armor_kl_lambda_derivative(losses, costs, middle.exp(), radius, clean) > 0
        log_low, log_high = torch.where(rising, log_low, middle), torch.where(rising, middle, log_high)
    interior = ((log_low + log_high) / 2).exp()
    slope_low, slope_high = (armor_kl_lambda_derivative(losses, costs, end, radius, clean) for end in ends)
    value_low, value_high = (armor_kl_loss(*_winning_candidates(losses, costs, end, clean), end, radius) for end in ends)
    boundary = torch.where(value_low <= value_high, ends[0], ends[1])
    return torch.where((slope_low >= 0) | (slope_high <= 0), boundary, interior)
