"""ARMOR_D adversarial training (Birrell & Ebrahimi, arXiv 2309.03791) in lipbench's L2
threat model: ``armor_kl`` (KL divergence) and ``armor_alpha`` (α-divergence); the TRADES
variants ``armor_kl_trades`` and ``armor_alpha_trades`` live in :mod:`.armor_trades`.

A training step (one batch ``x, y``):

1. inner maximisation (:func:`ot_inner_maximisation`): from ``x``, L2-normalised gradient
   ascent on ``L(x̃)/λ − c(x, x̃)`` with ``c = κ‖x − x̃‖₂^q`` (λ: the loss's current value),
   clamped to the data box, optionally projected onto an L2 ball; the best point seen per
   example is kept;
2. outer loss (:class:`ArmorLoss`): ``(1 − w)·ARMOR + w·CE(model(x), y)`` with ARMOR the
   objective of :mod:`lipbench.losses_armor` and ``w`` = ``clean_weight`` (0.5, the authors'
   ``adv_s + nat`` variant); λ (and ν) are :class:`torch.nn.Parameter` of the loss,
   trained by the run's optimiser beside the network (see :meth:`Method.loss_function`).

λ by bisection (``lambda_bisection: true``, KL variants only; the authors' ``*_KL_bisec`` CIFAR
scripts): λ is then no parameter. Each outer loss takes ``λ* = argmin_λ g(λ)`` of the batch
(:func:`~lipbench.losses_armor.armor_kl_optimal_lambda`, used detached: envelope theorem) and
keeps it in the buffer ``last_lambda``, which the next batch's inner maximisation uses (the
first batch: ``lambda_init``). The trainer checkpoints only losses with parameters, so a
resumed run restarts this buffer at ``lambda_init`` (one batch's inner maximisation differs).
``g``'s inner sup runs over the two candidates ``{x̃_i, x_i}`` (x̃ was found with the previous
λ, and with x̃ alone ``g`` can fall without end once its costs outweigh its losses; measured on
digits, λ* then jumped between 1e3 and ~5 from batch to batch): the clean loss at ``x_i`` (0 for
TRADES) keeps λ* finite (:func:`~lipbench.losses_armor.armor_kl_optimal_lambda`).

Differences from the authors' code (github.com/star-ailab/ARMOR): the inner steps are
L2-normalised gradient steps, not sign (L∞) steps, since lipbench's threat model is L2; λ is
``softplus`` of a raw parameter (positive by construction; their code resets a negative λ);
λ and ν share the network's optimiser and learning rate (their code: a separate Adam),
without weight decay. Their bisection (``optimize_lambda``) bisects in λ on ``[0, λ_b]``
with λ_b doubled up to 100 and no transport cost in ``g``; here in ``log λ`` on
``[1e-3, 1e3]`` with the costs ``c_i``, as the dual writes ``g``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.losses_armor import (
    armor_alpha_loss,
    armor_kl_loss,
    armor_kl_optimal_lambda,
    per_sample_cross_entropy,
    per_sample_trades_kl,
    transport_cost,
)
from lipbench.methods.base import Method, register_method

__all__ = ["ArmorLoss", "ArmorMethod", "ot_inner_maximisation"]


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
    *,
    per_sample_loss: Callable[[Tensor], Tensor] | None = None,
    start: Tensor | None = None,
) -> Tensor:
    """ARMOR_D's adversarial samples: ``x̃_i ≈ argmax L(x̃)/λ − κ‖x_i − x̃‖₂^q`` (the
    c-transform inside the dual of :mod:`lipbench.losses_armor`).

    ``L`` is ``per_sample_loss(model(x̃))`` (shape ``(N,)``; default: the cross-entropy with
    ``y``; TRADES: the KL to the clean prediction). ``steps`` L2-normalised gradient-ascent
    steps of length ``step_size`` from ``start`` (default ``x``, as the authors), each
    followed by the projection onto the L2 ball of radius ``projection_radius`` around ``x``
    (0: unprojected, as in the paper) and the clamp to ``bounds``. Per example, the iterate
    with the largest objective is returned (the start if no step improved it), so the
    objective never decreases from its start.
    """

    def objective(candidate: Tensor) -> Tensor:
        logits = model(candidate)
        losses = per_sample_cross_entropy(logits, y) if per_sample_loss is None else per_sample_loss(logits)
        return losses / lam - transport_cost(x, candidate, cost_weight, cost_power)

    best = (x if start is None else start).detach().clone()
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
    """``loss(outputs, labels)`` of ARMOR_D with its dual variables.

    ``raw_lambda`` (λ = softplus(raw_lambda) > 0) and, for the α-divergence, ``nu`` are
    parameters: the trainer adds them to the optimiser and the checkpoint. With
    ``lambda_bisection`` (KL only) there is no λ parameter: each call takes the batch's
    ``λ* = argmin g`` (:func:`armor_kl_optimal_lambda`, detached) and stores it in the
    persistent buffer ``last_lambda``, which :attr:`lam` returns.

    ``base``: ``"cross_entropy"`` (ARMOR_D: per-sample losses ``CE(f(x̃_i), y_i)``, mixed with
    the clean cross-entropy by ``clean_weight``) or ``"trades"`` (ARMOR_D on TRADES: per-sample
    losses ``KL(p(x_i) ‖ p(x̃_i))``, loss ``CE(f(x), y).mean() + trades_beta · ARMOR``;
    TRADES eq. 5 with its KL term robustified). The batch's transport costs and clean
    quantities come from :meth:`set_batch` (called by the method's ``training_inputs``); a
    call without it treats ``outputs`` as clean (``x̃ = x``: zero costs). Each
    :meth:`set_batch` serves one call.
    """

    def __init__(
        self,
        divergence: str,
        radius: float,
        lambda_init: float,
        clean_weight: float = 0.0,
        alpha: float = 2.0,
        nu_init: float = 0.0,
        *,
        base: str = "cross_entropy",
        trades_beta: float = 6.0,
        lambda_bisection: bool = False,
    ) -> None:
        super().__init__()
        if divergence not in ("kl", "alpha"):
            raise ValueError(f"ArmorLoss: divergence must be 'kl' or 'alpha', got {divergence!r}")
        if base not in ("cross_entropy", "trades"):
            raise ValueError(f"ArmorLoss: base must be 'cross_entropy' or 'trades', got {base!r}")
        if lambda_bisection and divergence != "kl":
            raise ValueError("ArmorLoss: lambda_bisection is defined for the KL divergence only")
        if base == "trades" and clean_weight != 0:
            raise ValueError("ArmorLoss: clean_weight does not apply to base 'trades' (its clean term is CE(f(x), y))")
        self.divergence, self.radius, self.clean_weight, self.alpha = divergence, radius, clean_weight, alpha
        self.base, self.trades_beta, self.lambda_bisection = base, trades_beta, lambda_bisection
        self.raw_lambda = None if lambda_bisection else nn.Parameter(torch.tensor(_inverse_softplus(lambda_init)))
        if lambda_bisection:
            self.register_buffer("last_lambda", torch.tensor(float(lambda_init)))
        self.nu = nn.Parameter(torch.tensor(float(nu_init))) if divergence == "alpha" else None
        self._batch: tuple[Tensor, Tensor | None] | None = None

    @property
    def lam(self) -> Tensor:
        """λ = softplus(raw_lambda) > 0; with bisection, the last batch's λ* (no gradient)."""
        return self.last_lambda if self.lambda_bisection else F.softplus(self.raw_lambda)

    def set_batch(self, costs: Tensor, clean: Tensor | None) -> None:
        """The next call's transport costs ``c_i`` (no gradient) and clean quantities, with
        their graph: per-sample clean losses (base ``cross_entropy``) or the clean logits
        ``f(x)`` (base ``trades``); None: take them from that call's outputs."""
        self._batch = (costs.detach(), clean)

    def forward(self, outputs: Tensor, labels: Tensor) -> Tensor:
        costs, clean = self._batch if self._batch is not None else (None, None)
        self._batch = None
        if self.base == "trades":
            clean_logits = outputs if clean is None else clean
            losses = per_sample_trades_kl(clean_logits, outputs)
        else:
            losses = per_sample_cross_entropy(outputs, labels)
        if len(losses) == 0:  # an empty shard under torchrun: an exact, connected zero
            return outputs.sum() * 0.0 + self.lam * 0.0
        costs = torch.zeros_like(losses) if costs is None else costs.to(losses.dtype)
        if costs.shape != losses.shape:
            raise ValueError(f"ArmorLoss: {len(costs)} transport costs for a batch of {len(losses)}")
        robust = self._robust(losses, costs, self._clean_candidate(losses, clean))
        if self.base == "trades":
            return per_sample_cross_entropy(clean_logits, labels).mean() + self.trades_beta * robust
        if self.clean_weight == 0:
            return robust
        clean_mean = (clean if clean is not None else losses).mean()
        return (1 - self.clean_weight) * robust + self.clean_weight * clean_mean

    def _clean_candidate(self, losses: Tensor, clean: Tensor | None) -> Tensor | None:
        """The per-sample loss at ``x`` itself, the second candidate of the bisection's inner
        sup (:func:`armor_kl_optimal_lambda`): 0 for TRADES (KL(p(x) ‖ p(x)) = 0), the clean
        cross-entropy otherwise (None when not computed: bisection off)."""
        if not self.lambda_bisection:
            return None
        if self.base == "trades":
            return torch.zeros_like(losses)
        return None if clean is None else clean.detach()

    def _robust(self, losses: Tensor, costs: Tensor, clean_candidate: Tensor | None) -> Tensor:
        """The ARMOR objective of :mod:`lipbench.losses_armor` at this batch (λ* by bisection
        over the candidates ``{x̃_i, x_i}``)."""
        if self.nu is not None:
            return armor_alpha_loss(losses, costs, self.lam, self.nu, self.radius, self.alpha)
        if self.lambda_bisection:
            lam = armor_kl_optimal_lambda(losses, costs, self.radius, clean_losses=clean_candidate)
            self.last_lambda = lam.to(losses.dtype)
        return armor_kl_loss(losses, costs, self.lam, self.radius)


#: name -> (minimum, strict, maximum or None) for the checks of ArmorMethod.resolve_params.
_RANGES: dict[str, tuple[float, bool, float | None]] = {
    "divergence_radius": (0.0, False, None),
    "cost_weight": (0.0, False, None),
    "cost_power": (1.0, False, None),
    "lambda_init": (0.0, True, None),
    "clean_weight": (0.0, False, 1.0),
    "alpha": (1.0, True, None),
    "trades_beta": (0.0, True, None),
    "steps": (0.0, False, None),
    "step_size": (0.0, False, None),
    "projection_radius": (0.0, False, None),
}


class ArmorMethod(Method):
    """What the ARMOR_D methods share: the unconstrained kit (as ``adv``), the inner
    maximisation and the parameter checks. Subclasses set ``divergence`` and ``base`` (see
    :class:`ArmorLoss`) and may override :meth:`_adversary` and :meth:`_clean`."""

    divergence: ClassVar[str] = "kl"
    base: ClassVar[str] = "cross_entropy"
    reference = {
        "link": "https://arxiv.org/abs/2309.03791",
        "authors": "Birrell, Ebrahimi",
        "venue": "arXiv 2309.03791 (2023, rev. 2025)",
    }
    kit = "unconstrained"
    loss = "cross_entropy"
    #: divergence_radius ε, cost_weight κ and cost_power q of c = κ‖x − x̃‖₂^q, λ's initial
    #: value, the clean cross-entropy's weight (authors' code defaults); lambda_bisection:
    #: λ = argmin of the batch's KL dual instead of a learned parameter (KL variants only).
    defaults: ClassVar[Mapping[str, float]] = {
        "divergence_radius": 5e-4,
        "cost_weight": 0.1,
        "cost_power": 1.5,
        "lambda_init": 1.0,
        "clean_weight": 0.5,
        "lambda_bisection": False,
    }
    #: inner maximisation: L2 steps (as adv's 7) of step_size; projection_radius 0: unprojected.
    training_defaults = {"steps": 7, "step_size": 0.15, "projection_radius": 0.0}

    def resolve_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """As :meth:`Method.resolve_params`, then each value checked against its range
        (λ₀ > 0, α > 1, κ >= 0, q >= 1, 0 <= clean_weight <= 1, β > 0, integer steps >= 0,
        ...) and ``lambda_bisection`` a boolean, false for the α-divergence."""
        flag = dict(params or {}).get("lambda_bisection", False)
        if not isinstance(flag, bool):
            raise ValueError(f"method {self.name!r}: parameter lambda_bisection must be true or false, got {flag!r}")
        resolved = super().resolve_params(params)
        for key, value in resolved.items():
            if key not in _RANGES:  # nu_init: any real number; lambda_bisection: checked above
                continue
            low, strict, high = _RANGES[key]
            if (value <= low if strict else value < low) or (high is not None and value > high):
                bound = f"{'>' if strict else '>='} {low:g}" + ("" if high is None else f" and <= {high:g}")
                raise ValueError(f"method {self.name!r}: parameter {key} must be {bound}, got {value!r}")
        if resolved["steps"] != int(resolved["steps"]):
            raise ValueError(f"method {self.name!r}: parameter steps must be an integer, got {resolved['steps']!r}")
        if resolved["lambda_bisection"] and self.divergence != "kl":
            raise ValueError(
                f"method {self.name!r}: parameter lambda_bisection must be false for the α-divergence, got True "
                "(bisection is defined for the one-dimensional KL dual only; λ and ν are learned)"
            )
        if resolved["lambda_bisection"] and self.base == "trades":
            raise ValueError(
                f"method {self.name!r}: parameter lambda_bisection must be false for the TRADES variants, got True "
                "(x̃ = x is a local maximum of KL/λ − c, so half the batches find no adversary and λ* falls to its lower "
                "end: measured on digits, λ* alternated between 1e-3 and ~10; λ is learned)"
            )
        return resolved

    def loss_function(self, binary: bool, params: Mapping[str, Any]) -> ArmorLoss:  # type: ignore[override]
        """A fresh :class:`ArmorLoss` (an ``nn.Module`` holding λ, ν). No ``reduce``: a
        log-sum-exp over the batch is no sum of per-rank terms, so under torchrun each rank
        normalises over its own shard (see :mod:`lipbench.train.distributed`)."""
        return ArmorLoss(
            self.divergence,
            float(params["divergence_radius"]),
            float(params["lambda_init"]),
            float(params.get("clean_weight", 0.0)),
            float(params.get("alpha", 2.0)),
            float(params.get("nu_init", 0.0)),
            base=self.base,
            trades_beta=float(params.get("trades_beta", 6.0)),
            lambda_bisection=bool(params.get("lambda_bisection", False)),
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
        """x̃ from :func:`ot_inner_maximisation` with the loss's current λ (per-sample loss
        and start from :meth:`_adversary`); tells ``loss`` (an :class:`ArmorLoss`) the costs
        ``c_i`` and the clean quantities of :meth:`_clean`."""
        if not isinstance(loss, ArmorLoss):
            raise TypeError(f"method {self.name!r}: training_inputs needs the ArmorLoss of loss_function, got {loss!r}")
        steps, step_size = int(params["steps"]), float(params["step_size"])
        if steps == 0 or step_size == 0:
            loss.set_batch(torch.zeros(len(x), dtype=x.dtype, device=x.device), None)
            return x
        weight, power = float(params["cost_weight"]), float(params["cost_power"])
        lam, radius = float(loss.lam.detach()), float(params["projection_radius"])
        per_sample_loss, start = self._adversary(model, x, y, bounds, generator)
        moved = ot_inner_maximisation(
            model, x, y, lam, weight, power, steps, step_size, radius, bounds, per_sample_loss=per_sample_loss, start=start
        )
        loss.set_batch(transport_cost(x, moved, weight, power), self._clean(model, x, y, loss))
        return moved

    def _adversary(
        self, model: nn.Module, x: Tensor, y: Tensor, bounds: tuple[float, float] | None, generator: torch.Generator
    ) -> tuple[Callable[[Tensor], Tensor] | None, Tensor | None]:
        """The inner maximisation's per-sample loss of ``model(x̃)`` and start; here the
        cross-entropy with ``y`` from ``x`` (None, None). No randomness: ``generator`` unused."""
        return None, None

    def _clean(self, model: nn.Module, x: Tensor, y: Tensor, loss: ArmorLoss) -> Tensor | None:
        """What :meth:`ArmorLoss.set_batch` takes as ``clean``: the clean per-sample
        cross-entropy (with its graph) when clean_weight > 0 or λ is found by bisection (the
        candidate ``x_i``), else None."""
        needed = loss.clean_weight > 0 or loss.lambda_bisection
        return per_sample_cross_entropy(model(x).float(), y) if needed else None


@register_method("armor_kl")
class ArmorKL(ArmorMethod):
    paper_name = "ARMOR_KL"
    description = (
        "ARMOR_D with the KL divergence: unconstrained ReLU network, OT-regularised L2 adversary that transports "
        "(cost κ‖x − x̃‖^q) and re-weights (softmax of L/λ − c) the batch; λ learned (or by bisection per batch)."
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
