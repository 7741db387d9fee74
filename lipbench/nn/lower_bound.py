"""Empirical lower bounds of a model's Lipschitz constant (L2).

Every number here is attained by the model somewhere (a gradient norm at a point, or a
difference quotient between two points), so it is a valid lower bound; checking it
against the strict upper bound is how ``lipbench verify`` catches a wrong certificate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["LipschitzLowerBound", "lipschitz_lower_bound", "input_jacobian", "pair_quotients", "logit_difference_ascent"]


@dataclass(frozen=True)
class LipschitzLowerBound:
    """Empirical lower bounds, each attained by the model.

    ``whole_map``: max over points of the Jacobian's spectral norm and of pair quotients.
    ``per_logit[i]``: max gradient norm of logit ``i``. ``logit_difference``: max gradient
    norm of ``f_i - f_j`` over pairs (at most ``per_logit[i] + per_logit[j]`` upper bounds
    and at most ``sqrt(2)`` times the whole-map upper bound). ``sources`` says which
    procedure reached what.
    """

    whole_map: float
    per_logit: tuple[float, ...]
    logit_difference: float
    sources: dict[str, float] = field(default_factory=dict)

    @property
    def max_per_logit(self) -> float:
        return max(self.per_logit)

    def as_dict(self) -> dict:
        return {
            "whole_map": self.whole_map,
            "per_logit": list(self.per_logit),
            "max_per_logit": self.max_per_logit,
            "logit_difference": self.logit_difference,
            "sources": dict(self.sources),
        }


def input_jacobian(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """Jacobian of the logits with respect to the input, shape ``(N, K, D)``.

    One backward pass per logit (K is small); works with custom autograd functions.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        rows = []
        for k in range(logits.shape[1]):
            (gradient,) = torch.autograd.grad(
                logits[:, k].sum(), x, retain_graph=k + 1 < logits.shape[1] or create_graph, create_graph=create_graph
            )
            rows.append(gradient.reshape(len(x), -1))
    return torch.stack(rows, dim=1)


def _jacobian_statistics(jacobian: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per point: spectral norm of J, per-logit gradient norms, max pairwise-difference norm."""
    per_logit = torch.linalg.vector_norm(jacobian, dim=2)  # (N, K)
    if jacobian.shape[1] == 1:
        return per_logit[:, 0], per_logit, per_logit[:, 0]
    spectral = torch.linalg.matrix_norm(jacobian.double(), ord=2).to(jacobian.dtype)
    differences = jacobian[:, :, None, :] - jacobian[:, None, :, :]
    pairwise = torch.linalg.vector_norm(differences, dim=3).flatten(1).max(dim=1).values
    return spectral, per_logit, pairwise


def pair_quotients(model: nn.Module, x: Tensor, x_other: Tensor) -> tuple[Tensor, Tensor]:
    """Difference quotients ``||f(x) - f(x')|| / ||x - x'||`` (whole map, ``(N,)``) and
    ``|f_i(x) - f_i(x')| / ||x - x'||`` (per logit, ``(N, K)``). Pairs at distance 0 give 0."""
    with torch.no_grad():
        difference = model(x) - model(x_other)
        distance = torch.linalg.vector_norm((x - x_other).flatten(1), dim=1)
        safe = torch.where(distance > 0, distance, torch.ones_like(distance))
        whole = torch.where(distance > 0, torch.linalg.vector_norm(difference, dim=1) / safe, 0.0)
        per_logit = torch.where(distance[:, None] > 0, difference.abs() / safe[:, None], 0.0)
    return whole, per_logit


def _gradient_norm_ascent(
    model: nn.Module, x: Tensor, direction: Tensor, steps: int, step_size: float, noise: float, generator: torch.Generator
) -> Tensor:
    """Maximise ``||grad_x <direction, f(x)>||`` from ``x``; returns the best value per point.

    Gradient steps on the gradient norm (double backprop; zero almost everywhere on
    piecewise-linear parts) plus a random exploration step, keeping the best point.
    """
    best = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    current = x.detach().clone()
    scale = noise / math.sqrt(x[0].numel())
    for _ in range(steps + 1):
        current.requires_grad_(True)
        with torch.enable_grad():
            output = (model(current) * direction).sum()
            (gradient,) = torch.autograd.grad(output, current, create_graph=True)
            norm = torch.linalg.vector_norm(gradient.flatten(1), dim=1)
            # On piecewise-linear models the gradient norm is locally constant (no graph).
            norm_gradient = torch.autograd.grad(norm.sum(), current, allow_unused=True)[0] if norm.requires_grad else None
        best = torch.maximum(best, norm.detach())
        if norm_gradient is None:
            norm_gradient = torch.zeros_like(current)
        step = norm_gradient.flatten(1)
        step = step / torch.linalg.vector_norm(step, dim=1, keepdim=True).clamp_min(1e-12)
        jitter = torch.randn(current.shape, generator=generator, dtype=current.dtype, device="cpu").to(current.device)
        current = (current.detach() + step_size * step.reshape(current.shape) + scale * jitter).detach()
    return best


def logit_difference_ascent(
    model: nn.Module,
    x: Tensor,
    first: Tensor,
    second: Tensor,
    *,
    steps: int = 10,
    step_size: float = 0.05,
    noise: float = 0.05,
    seed: int = 0,
) -> Tensor:
    """Per point, the largest ``||grad_x (f_first - f_second)||`` at ``x`` and along
    gradient-norm ascent from it: attained, so a lower bound of the Lipschitz constant of
    that logit difference (what a pairwise certificate bounds from above)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    direction = torch.zeros(len(x), classes, dtype=x.dtype, device=x.device)
    direction = direction.scatter(1, first[:, None].to(x.device), 1.0).scatter(1, second[:, None].to(x.device), -1.0)
    return _gradient_norm_ascent(model, x, direction, steps, step_size, noise, generator)


def _ascent(
    model: nn.Module, batch: Tensor, steps: int, step_size: float, noise: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Gradient-norm ascent from ``batch``: (per-class bound on each logit's gradient norm,
    per-point bound along the top-two logit difference, normalised)."""
    with torch.no_grad():
        logits = model(batch)
    classes = logits.shape[1]
    if classes == 1:
        best = _gradient_norm_ascent(model, batch, torch.ones_like(logits), steps, step_size, noise, generator)
        return best.max().reshape(1), best
    top2 = logits.topk(2, dim=1).indices
    direction = torch.zeros_like(logits).scatter_(1, top2[:, :1], 1.0)
    best = _gradient_norm_ascent(model, batch, direction, steps, step_size, noise, generator)
    # Each point's ascent bounds the logit of its own top class.
    per_class = torch.zeros(classes, dtype=best.dtype, device=best.device).scatter_reduce(0, top2[:, 0], best, reduce="amax")
    direction = direction.scatter(1, top2[:, 1:], -1.0) / math.sqrt(2.0)
    return per_class, _gradient_norm_ascent(model, batch, direction, steps, step_size, noise, generator)


def lipschitz_lower_bound(
    model: nn.Module,
    x: Tensor,
    *,
    ascent_steps: int = 10,
    ascent_step_size: float = 0.05,
    ascent_noise: float = 0.05,
    batch_size: int = 256,
    seed: int = 0,
) -> LipschitzLowerBound:
    """Empirical lower bounds from gradient norms at the points ``x`` and from
    gradient-norm ascent started at them (per logit for the top class, and along the
    top-two logit difference). ``model`` should be in eval mode (e.g. an export)."""
    if len(x) == 0:
        raise ValueError("lipschitz_lower_bound needs at least one point")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    whole, per_logit, difference, ascent_logit, ascent_difference = [], [], [], [], []
    for batch in x.split(batch_size):
        jacobian = input_jacobian(model, batch)
        spectral, logit_norms, pairwise = _jacobian_statistics(jacobian)
        whole.append(spectral)
        per_logit.append(logit_norms)
        difference.append(pairwise)
        if ascent_steps > 0:
            logit_bound, difference_bound = _ascent(model, batch, ascent_steps, ascent_step_size, ascent_noise, generator)
            ascent_logit.append(logit_bound)
            ascent_difference.append(difference_bound)
    at_points_whole = float(torch.cat(whole).max())
    per_logit_values = torch.cat(per_logit).max(dim=0).values
    at_points_difference = float(torch.cat(difference).max())
    sources = {
        "gradient_at_points_whole_map": at_points_whole,
        "gradient_at_points_max_per_logit": float(per_logit_values.max()),
        "gradient_at_points_logit_difference": at_points_difference,
    }
    whole_map = at_points_whole
    if ascent_difference:
        # Unit direction c: ||grad <c, f>|| <= ||J|| <= whole-map constant.
        ascent_whole = float(torch.cat(ascent_difference).max())
        sources["gradient_ascent_whole_map"] = ascent_whole
        whole_map = max(whole_map, ascent_whole)
    if ascent_logit:
        ascent_per_class = torch.stack(ascent_logit).max(dim=0).values
        sources["gradient_ascent_max_per_logit"] = float(ascent_per_class.max())
        per_logit_values = torch.maximum(per_logit_values, ascent_per_class)
    per_logit_tuple = tuple(float(v) for v in per_logit_values)
    logit_difference = at_points_difference
    if ascent_difference and len(per_logit_tuple) > 1:
        logit_difference = max(logit_difference, math.sqrt(2.0) * float(torch.cat(ascent_difference).max()))
    return LipschitzLowerBound(whole_map=whole_map, per_logit=per_logit_tuple, logit_difference=logit_difference, sources=sources)
