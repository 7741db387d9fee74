"""ARMOR_D adversarial training (Birrell & Ebrahimi, arXiv 2309.03791) in lipbench's L2
threat model: ``armor_kl`` (KL divergence) and ``armor_alpha`` (α-divergence).

A training step (one batch ``x, y``):

1. inner maximisation (:func:`ot_inner_maximisation`): from ``x``, L2-normalised gradient
   ascent on ``L(x̃)/λ − c(x, x̃)`` with ``c = κ‖x − x̃‖₂^q`` (λ: the loss's current value),
   clamped to the data box, optionally projected onto an L2 ball; the best point seen per
   example is kept;
2. outer loss (:class:`ArmorLoss`): ``(1 − w)·ARMOR + w·CE(model(x), y)`` with ARMOR the
   objective of :mod:`lipbench.losses_armor` and ``w`` = ``clean_weight`` (0.5, the authors'
   ``adv_s + nat`` variant); λ (and ν) are :class:`torch.nn.Parameter` of the loss,
   trained by the run's optimiser beside the network (see :meth:`Method.loss_function`).

Differences from the authors' code (github.com/star-ailab/ARMOR): the inner steps are
L2-normalised gradient steps, not sign (L∞) steps, since lipbench's threat model is L2; λ is
``softplus`` of a raw parameter (positive by construction; their code resets a negative λ);
λ and ν share the network's optimiser and learning rate (their code: a separate Adam),
without weight decay. λ found by bisection per batch (their CIFAR-100 option) is not
implemented.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.losses_armor import armor_alpha_loss, armor_kl_loss, per_sample_cross_entropy, transport_cost
from lipbench.methods.base import Method, register_method

__all__ = ["ArmorLoss", "ot_inner_maximisation"]


def _per_sample_norm(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t.flatten(1), dim=1).reshape(-1, *([1] * (t.ndim - 1)))


def ot_inner_maximisation(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    lam: float,
    cost_weight: float,
    cost_power: float,
    steps: int,
    step_size: float,
    projection_radius: float = 0.0,
    bounds: tuple[float, float] | None = None,
) -> Tensor:
    """ARMOR_D's adversarial samples: ``x̃_i ≈ argmax L(x̃)/λ − κ‖x_i − x̃‖₂^q`` (the
    c-transform inside the dual of :mod:`lipbench.losses_armor`).

    ``steps`` L2-normalised gradient-ascent steps of length ``step_size`` from ``x`` (the
    authors start at ``x`` too), each followed by the projection onto the L2 ball of radius
    ``projection_radius`` (0: unprojected, as in the paper) and the clamp to ``bounds``.
    Per example, the iterate with the largest objective is returned (``x`` itself if no step
    improved it), so the objective never decreases from its start.
    """

    def objective(candidate: Tensor) -> Tensor:
        return per_sample_cross_entropy(model(candidate), y) / lam - transport_cost(x, candidate, cost_weight, cost_power)

    best = x.detach().clone()
    with torch.no_grad():
        best_value = objective(best)
    current = best.clone()
    for _ in range(steps):
        current.requires_grad_(True)
        (gradient,) = torch.autograd.grad(objective(current).sum(), current)
        with torch.no_grad():
            current = current + step_size * gradient / _per_sample_norm(gradient).clamp_min(1e-12)
            if projection_radius > 0:
                delta = current - x
                current = x + delta * (projection_radius / _per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
            if bounds is not None:
                current = current.clamp(*bounds)
            value = objective(current)
            improved = value > best_value
            best = torch.where(improved.reshape(-1, *([1] * (x.ndim - 1))), current, best)
            best_value = torch.where(improved, value, best_value)
    return best.detach()


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


class ArmorLoss(nn.Module):
    """``loss(outputs, labels)`` of ARMOR_D with its learned dual variables.

    ``raw_lambda`` (λ = softplus(raw_lambda) > 0) and, for the α-divergence, ``nu`` are
    parameters: the trainer adds them to the optimiser and the checkpoint. The batch's
    transport costs and clean losses come from :meth:`set_batch` (called by the method's
    ``training_inputs``); a call without it treats ``outputs`` as clean (``x̃ = x``: zero
    costs, clean term from ``outputs``). Each :meth:`set_batch` serves one call.
    """

    def __init__(
        self,
        divergence: str,
        radius: float,
        lambda_init: float,
        clean_weight: float,
        alpha: float = 2.0,
        nu_init: float = 0.0,
    ) -> None:
        super().__init__()
        if divergence not in ("kl", "alpha"):
            raise ValueError(f"ArmorLoss: divergence must be 'kl' or 'alpha', got {divergence!r}")
        self.divergence, self.radius, self.clean_weight, self.alpha = divergence, radius, clean_weight, alpha
        self.raw_lambda = nn.Parameter(torch.tensor(_inverse_softplus(lambda_init)))
        self.nu = nn.Parameter(torch.tensor(float(nu_init))) if divergence == "alpha" else None
        self._batch: tuple[Tensor, Tensor | None] | None = None

    @property
    def lam(self) -> Tensor:
        """λ = softplus(raw_lambda) > 0."""
        return F.softplus(self.raw_lambda)

    def set_batch(self, costs: Tensor, clean_losses: Tensor | None) -> None:
        """The next call's transport costs ``c_i`` (no gradient) and per-sample clean losses
        (with their graph; None: take them from that call's outputs)."""
        self._batch = (costs.detach(), clean_losses)

    def forward(self, outputs: Tensor, labels: Tensor) -> Tensor:
        losses = per_sample_cross_entropy(outputs, labels)
        costs, clean_losses = self._batch if self._batch is not None else (torch.zeros_like(losses), None)
        self._batch = None
        if len(losses) == 0:  # an empty shard under torchrun: an exact, connected zero
            return outputs.sum() * 0.0 + self.lam * 0.0
        if costs.shape != losses.shape:
            raise ValueError(f"ArmorLoss: {len(costs)} transport costs for a batch of {len(losses)}")
        costs = costs.to(losses.dtype)
        if self.nu is None:
            robust = armor_kl_loss(losses, costs, self.lam, self.radius)
        else:
            robust = armor_alpha_loss(losses, costs, self.lam, self.nu, self.radius, self.alpha)
        if self.clean_weight == 0:
            return robust
        clean = (clean_losses if clean_losses is not None else losses).mean()
        return (1 - self.clean_weight) * robust + self.clean_weight * clean


#: name -> (minimum, strict, maximum or None) for the checks of ArmorMethod.resolve_params.
_RANGES: dict[str, tuple[float, bool, float | None]] = {
    "divergence_radius": (0.0, False, None),
    "cost_weight": (0.0, False, None),
    "cost_power": (1.0, False, None),
    "lambda_init": (0.0, True, None),
    "clean_weight": (0.0, False, 1.0),
    "alpha": (1.0, True, None),
    "steps": (0.0, False, None),
    "step_size": (0.0, False, None),
    "projection_radius": (0.0, False, None),
}


class ArmorMethod(Method):
    """What ``armor_kl`` and ``armor_alpha`` share: the unconstrained kit (as ``adv``), the
    inner maximisation and the parameter checks."""

    divergence: ClassVar[str] = "kl"
    reference = {
        "link": "https://arxiv.org/abs/2309.03791",
        "authors": "Birrell, Ebrahimi",
        "venue": "arXiv 2309.03791 (2023, rev. 2025)",
    }
    kit = "unconstrained"
    loss = "cross_entropy"
    #: divergence_radius ε, cost_weight κ and cost_power q of c = κ‖x − x̃‖₂^q, λ's initial
    #: value, the clean cross-entropy's weight (authors' code defaults).
    defaults: ClassVar[Mapping[str, float]] = {
        "divergence_radius": 5e-4,
        "cost_weight": 0.1,
        "cost_power": 1.5,
        "lambda_init": 1.0,
        "clean_weight": 0.5,
    }
    #: inner maximisation: L2 steps (as adv's 7) of step_size; projection_radius 0: unprojected.
    training_defaults = {"steps": 7, "step_size": 0.15, "projection_radius": 0.0}

    def resolve_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """As :meth:`Method.resolve_params`, then each value checked against its range
        (λ₀ > 0, α > 1, κ >= 0, q >= 1, 0 <= clean_weight <= 1, integer steps >= 0, ...)."""
        resolved = super().resolve_params(params)
        for key, value in resolved.items():
            if key not in _RANGES:  # nu_init: any real number
                continue
            low, strict, high = _RANGES[key]
            if (value <= low if strict else value < low) or (high is not None and value > high):
                bound = f"{'>' if strict else '>='} {low:g}" + ("" if high is None else f" and <= {high:g}")
                raise ValueError(f"method {self.name!r}: parameter {key} must be {bound}, got {value!r}")
        if resolved["steps"] != int(resolved["steps"]):
            raise ValueError(f"method {self.name!r}: parameter steps must be an integer, got {resolved['steps']!r}")
        return resolved

    def loss_function(self, binary: bool, params: Mapping[str, Any]) -> ArmorLoss:  # type: ignore[override]
        """A fresh :class:`ArmorLoss` (an ``nn.Module`` holding λ, ν). No ``reduce``: a
        log-sum-exp over the batch is no sum of per-rank terms, so under torchrun each rank
        normalises over its own shard (see :mod:`lipbench.train.distributed`)."""
        return ArmorLoss(
            self.divergence,
            float(params["divergence_radius"]),
            float(params["lambda_init"]),
            float(params["clean_weight"]),
            float(params.get("alpha", 2.0)),
            float(params.get("nu_init", 0.0)),
        )

    def training_inputs(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        loss: Callable[[Tensor, Tensor], Tensor],
        params: Mapping[str, Any],
        bounds: tuple[float, float] | None,
        generator: torch.Generator,
    ) -> Tensor:
        """x̃ from :func:`ot_inner_maximisation` with the loss's current λ; tells ``loss``
        (an :class:`ArmorLoss`) the costs ``c_i`` and, when clean_weight > 0, the clean
        per-sample losses. No randomness: ``generator`` is unused."""
        if not isinstance(loss, ArmorLoss):
            raise TypeError(f"method {self.name!r}: training_inputs needs the ArmorLoss of loss_function, got {loss!r}")
        steps = int(params["steps"])
        if steps == 0 or float(params["step_size"]) == 0:
            loss.set_batch(torch.zeros(len(x), dtype=x.dtype, device=x.device), None)
            return x
        weight, power = float(params["cost_weight"]), float(params["cost_power"])
        lam = float(loss.lam.detach())
        moved = ot_inner_maximisation(
            model, x, y, lam, weight, power, steps, float(params["step_size"]), float(params["projection_radius"]), bounds
        )
        clean = per_sample_cross_entropy(model(x).float(), y) if loss.clean_weight > 0 else None
        loss.set_batch(transport_cost(x, moved, weight, power), clean)
        return moved


@register_method("armor_kl")
class ArmorKL(ArmorMethod):
    paper_name = "ARMOR_KL"
    description = (
        "ARMOR_D with the KL divergence: unconstrained ReLU network, OT-regularised L2 adversary that transports "
        "(cost κ‖x − x̃‖^q) and re-weights (softmax of L/λ − c) the batch; λ learned."
    )
    divergence = "kl"


@register_method("armor_alpha")
class ArmorAlpha(ArmorMethod):
    paper_name = "ARMOR_α"
    description = (
        "ARMOR_D with the α-divergence: unconstrained ReLU network, OT-regularised L2 adversary that transports "
        "(cost κ‖x − x̃‖^q) and re-weights (((α−1)((L−ν)/λ − c))₊^{1/(α−1)}) the batch; λ and ν learned."
    )
    divergence = "alpha"
    #: alpha: the divergence's order (> 1; the authors' MNIST configuration uses 3); nu_init:
    #: ν's initial value (−0.35 in the authors' CIFAR code).
    defaults: ClassVar[Mapping[str, float]] = {**ArmorMethod.defaults, "alpha": 3.0, "nu_init": -0.35}
