"""Carlini-Wagner L2, in torch (Carlini & Wagner, "Towards evaluating the robustness of neural
networks", IEEE S&P 2017, arXiv:1608.04644).

For each point ``x`` with label ``y`` and a constant ``c`` it minimises (Sec. V-B, f_6)

    ||x' - x||_2^2 + c * max(Z(x')_y - max_{j != y} Z(x')_j + kappa, 0)

over ``x' = (tanh(w) + 1) / 2`` (the change of variables that keeps ``x'`` in ``[0, 1]``,
Sec. V-B, method 3) with Adam on ``w`` (Sec. VI), starting from the clean point. A binary
search on ``c`` per point (Sec. V-B) multiplies ``c`` by 10 while nothing is found, then
bisects; the smallest adversarial seen at any step of any constant is kept (``kappa`` is
the option ``confidence``).

Why not foolbox 3.3.4's ``L2CarliniWagnerAttack``: it returns an all-zero image where it
found nothing (a black image is usually misclassified, so re-checking it counted a failure
as a success at distance ``||x||``), and its early abort compares the loss summed over the
batch, so a point's result depended on its batch. Here a point with no adversarial gets
``inf``, and the early abort is per point: every tenth of ``steps`` a point stops when
neither its loss fell by 0.01 % (the authors' test) nor its best norm improved by 0.01 %
since the last check; stopped points leave the batch. Option defaults come from
``benchmarks/cw_tuning.py`` (1-Lipschitz models need ``c`` near 1 and, through the tanh,
a step size near 0.1 for 200 steps; foolbox's 0.001 and 0.01 left it far from DeepFool).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lipbench.evaluate.attacks.base import (
    AttackResult,
    Target,
    batches,
    check_float,
    check_int,
    register_attack,
    success_from_norms,
    verify_minimal,
)
from lipbench.progress import tqdm_disable

#: Adam's constants (Kingma & Ba 2015, the values Carlini & Wagner used).
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
#: ``x`` is scaled by this before ``arctanh`` so that 0 and 1 stay finite (as in the authors' code).
TANH_SHRINK = 1 - 1e-6
#: Above this the search treats ``c`` as having no upper bound yet (authors' code).
C_UNBOUNDED = 1e10


@dataclass
class _Best:
    """The closest adversarial found so far per point (``inf`` norm where none)."""

    x: torch.Tensor
    norm: torch.Tensor


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Z_y - max_{j != y} Z_j``: negative exactly when some other logit is strictly larger."""
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return true - others


def _step_loss(
    net: nn.Module, w0: torch.Tensor, delta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, const: torch.Tensor, kappa: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-point loss, its gradient in ``w`` space, the point ``x'`` and its margin."""
    delta = delta.detach().requires_grad_(True)
    x_adv = (torch.tanh(w0 + delta) + 1) / 2
    gap = margin(net(x_adv).float(), y)
    dist2 = (x_adv - x).flatten(1).square().sum(dim=1)
    loss = dist2 + const * (gap + kappa).clamp(min=0)
    (grad,) = torch.autograd.grad(loss.sum(), delta)
    return loss.detach(), grad, x_adv.detach(), gap.detach()


def _record(
    best: _Best, rows: torch.Tensor, x_adv: torch.Tensor, x: torch.Tensor, gap: torch.Tensor, kappa: float
) -> torch.Tensor:
    """Keep ``x_adv`` where it is adversarial (with ``kappa``) and closer; return which rows were adversarial."""
    adversarial = gap + kappa < 0
    norm = (x_adv.double() - x.double()).flatten(1).norm(dim=1)
    closer = adversarial & (norm < best.norm[rows])
    best.x[rows[closer]] = x_adv[closer]
    best.norm[rows[closer]] = norm[closer]
    return adversarial


def _optimise(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, const: torch.Tensor, best: _Best, options: dict[str, Any]
) -> torch.Tensor:
    """One constant per point: Adam on ``w`` for ``steps`` (per-point early abort); returns found flags."""
    steps, lr, kappa = options["steps"], options["stepsize"], options["confidence"]
    w0 = torch.atanh((2 * x - 1) * TANH_SHRINK)
    delta, m, v = torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x)
    rows = torch.arange(len(x), device=x.device)
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    previous = torch.full((len(x),), math.inf, device=x.device)
    previous_norm = best.norm.clone()
    check_every = max(math.ceil(steps / 10), 1)
    (b1, b2) = ADAM_BETAS
    for step in range(steps):
        loss, grad, x_adv, gap = _step_loss(net, w0[rows], delta[rows], x[rows], y[rows], const[rows], kappa)
        found[rows] |= _record(best, rows, x_adv, x[rows], gap, kappa)
        if options["abort_early"] and step % check_every == 0:
            keep = (loss <= 0.9999 * previous[rows]) | (best.norm[rows] < 0.9999 * previous_norm[rows])
            previous[rows], previous_norm[rows] = loss, best.norm[rows]
            rows, grad = rows[keep], grad[keep]
            if len(rows) == 0:
                break
        m[rows] = b1 * m[rows] + (1 - b1) * grad
        v[rows] = b2 * v[rows] + (1 - b2) * grad.square()
        m_hat, v_hat = m[rows] / (1 - b1 ** (step + 1)), v[rows] / (1 - b2 ** (step + 1))
        delta[rows] -= lr * m_hat / (v_hat.sqrt() + ADAM_EPS)
    else:
        x_adv = (torch.tanh(w0[rows] + delta[rows]) + 1) / 2
        with torch.no_grad():
            gap = margin(net(x_adv).float(), y[rows])
        found[rows] |= _record(best, rows, x_adv, x[rows], gap, kappa)
    return found


def carlini_wagner_l2(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, options: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closest adversarial per point found by the search on ``c`` and its L2 norm (``inf``: none).

    Where nothing was found, the returned point is ``x`` itself (never a fallback image).
    """
    n = len(x)
    best = _Best(x.clone(), torch.full((n,), math.inf, dtype=torch.float64, device=x.device))
    const = torch.full((n,), float(options["initial_const"]), device=x.device)
    lower = torch.zeros(n, device=x.device)
    upper = torch.full((n,), math.inf, device=x.device)
    for _ in range(options["binary_search_steps"]):
        found = _optimise(net, x, y, const, best, options)
        upper = torch.where(found, torch.minimum(upper, const), upper)
        lower = torch.where(found, lower, torch.maximum(lower, const))
        bounded = upper < C_UNBOUNDED
        const = torch.where(bounded, (lower + upper) / 2, const * 10)
    return best.x, best.norm


def _validate(options: dict[str, Any]) -> None:
    for key in ("binary_search_steps", "steps"):
        check_int(options, key, 1, "cw_l2")
    for key in ("stepsize", "confidence", "initial_const"):
        check_float(options, key, 0.0, "cw_l2")
    if options["stepsize"] == 0 or options["initial_const"] == 0:
        key = "stepsize" if options["stepsize"] == 0 else "initial_const"
        raise ValueError(f"option {key!r} of attack 'cw_l2' must be > 0, got 0")
    if not isinstance(options["abort_early"], bool):
        raise ValueError(f"option 'abort_early' of attack 'cw_l2' must be a bool, got {options['abort_early']!r}")


@register_attack(
    "cw_l2",
    minimal=True,
    defaults={
        "binary_search_steps": 5,
        "steps": 200,
        "stepsize": 0.1,
        "confidence": 0.0,
        "initial_const": 1.0,
        "abort_early": True,
    },
    validate=_validate,
)
def cw_l2(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilons: list[float],
    *,
    batch_size: int,
    options: dict[str, Any],
    progress: bool = False,
) -> AttackResult:
    """Carlini-Wagner L2 (minimal perturbation; success per eps derived from its norm)."""
    x_adv = x.clone()
    min_norm = np.full(len(x), np.inf)
    unverified = 0
    for sl in tqdm(list(batches(len(x), batch_size)), desc="cw_l2", disable=tqdm_disable(progress), leave=False):
        with torch.enable_grad():
            raw, norm = carlini_wagner_l2(target.net, x[sl].to(target.device), y[sl].to(target.device), options)
        x_adv[sl], min_norm[sl] = verify_minimal(target, x[sl], y[sl], raw)
        unverified += int((torch.isfinite(norm).cpu().numpy() & ~np.isfinite(min_norm[sl])).sum())
    success = success_from_norms(min_norm, epsilons)
    info = {"library": "lipbench", "attack": "carlini_wagner_l2", "options": options, "found_but_not_verified": unverified}
    return AttackResult("cw_l2", list(epsilons), success, x_adv, min_norm=min_norm, n_attacked=len(x), info=info)
