"""The paper's empirical-robustness protocol: every attack, pointwise worst case.

A point is *robust at eps* when it is correctly classified and no attack found a
verified adversarial example within eps. ``success`` arrays here only count correctly
classified points (a misclassified point is non-robust without any attack), which makes
them comparable between pruned and unpruned runs.

Pruning (``prune=True``) skips what is already decided; eps-ball attacks visit the radii
in ascending order (results stay indexed like the caller's list). At a given eps, a point
is not handed to an eps-ball attack when:

* certificates decide it: it is misclassified, ``eps == 0``, or ``certified_radius > eps``.
  The test is strict: a Lipschitz margin certificate guarantees the decision for every
  ``||delta|| < radius``; at ``||delta|| == radius`` the margin can reach 0, a tie whose
  argmax depends on tie-breaking, so points with ``radius == eps`` are attacked. With a
  valid certificate this changes nothing; a certified point broken by an attack (only
  observable unpruned) is counted in ``certificate_violations``;
* a smaller eps decided it: the same attack already broke it at ``eps1 <= eps`` (an
  earlier copy of a repeated eps included). Its adversarial example lies within
  ``eps1 <= eps``, so it is counted as broken at eps and that example is copied (not
  re-verified). Attacks are not monotone in eps: a rerun at eps might have failed, so a
  point broken at ``eps1`` counts as broken at every larger eps, and a pruned run can
  break more points than ``prune=False`` at larger radii. This is a semantics change:
  robust accuracy under attack can only go down relative to attacking every eps afresh
  (the unpruned reference, and pruned runs before carry-forward; exactly so for attacks
  seeded per point, as the foolbox ones are), and with pruning it is monotone
  non-increasing in eps for every attack.

``calls_saved_by_certificates`` and ``calls_saved_by_smaller_eps`` count the two kinds of
skipped (point, eps) pairs. Minimal-perturbation attacks (``cw_l2``, ``deepfool_l2``) are
not eps-based: they run once on the correctly classified points in both modes (pruning
is not applicable) and their success per eps is derived from the norm they found.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lipbench.evaluate.attacks.base import (
    ATTACKS,
    AttackSpec,
    Target,
    batches,
    prepared_target,
    validate_inputs,
)
from lipbench.evaluate.attacks.suite_result import SuiteResult
from lipbench.progress import tqdm_disable

logger = logging.getLogger(__name__)

#: The paper's attack set (FGM is the paper's L2 "FGSM").
DEFAULT_ATTACKS = ("fgm", "pgd_l2", "cw_l2", "deepfool_l2", "autoattack_l2")


class _UnitBoxInput(nn.Module):
    """``model(low + scale * z)``: the model seen from the unit box ``[0, 1]^d``."""

    def __init__(self, model: nn.Module, low: float, scale: float) -> None:
        super().__init__()
        self.model, self.low, self.scale = model, low, scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z * self.scale + self.low)


def run_attack_suite(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilons: Sequence[float],
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    certified_radius: torch.Tensor | np.ndarray | None = None,
    *,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    prune: bool = True,
    progress: bool = True,
    n_examples: int = 8,
    bounds: tuple[float, float] = (0.0, 1.0),
    precision: str = "fp32",
    compile_model: bool = False,
) -> SuiteResult:
    """Run ``attacks`` on ``(x, y)`` at every radius in ``epsilons``; see the module docstring.

    ``options`` maps attack names to option dicts (see ``ATTACKS.get(name).defaults``).
    ``device=None`` uses the device of the model's parameters; the model is put in eval
    mode (its training flag and ``requires_grad`` flags are restored afterwards).
    ``bounds``: the input box, ``(0, 1)`` for images. Other boxes are attacked through
    the exact reparametrisation ``x = low + (high - low) z`` with ``z`` in the unit box,
    radii divided by ``high - low`` (L2 distances scale uniformly); results are mapped
    back. ``precision="bf16"`` lets the attacks query the model under bf16 autocast and
    ``compile_model`` compiles what they query; every success is still verified on the
    float32 model. All inputs are checked before the model is called.
    """
    low, high = (float(b) for b in bounds)
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"bounds must be finite (low, high) with low < high, got {bounds!r}")
    settings = dict(
        batch_size=batch_size,
        device=device,
        options=options,
        prune=prune,
        progress=progress,
        n_examples=n_examples,
        precision=precision,
        compile_model=compile_model,
    )
    if (low, high) == (0.0, 1.0):
        return _run_unit_box(model, x, y, epsilons, attacks, certified_radius, **settings)
    scale = high - low
    x = torch.as_tensor(x)
    if x.is_floating_point() and torch.isfinite(x).all() and (x.min() < low or x.max() > high):
        raise ValueError(f"x must lie in the bounds {bounds}, got values in [{x.min():.4g}, {x.max():.4g}]")
    radius = None if certified_radius is None else torch.as_tensor(certified_radius) / scale
    eps = [float(e) for e in epsilons] if not isinstance(epsilons, (str, bytes)) else epsilons
    unit_eps = [e / scale for e in eps] if isinstance(eps, list) else eps
    unit_x = (x - low) / scale if x.is_floating_point() else x
    result = _run_unit_box(_UnitBoxInput(model, low, scale), unit_x, y, unit_eps, attacks, radius, **settings)
    result.epsilons = eps
    result.min_norms = {name: norms * scale for name, norms in result.min_norms.items()}
    if result.min_norm is not None:
        result.min_norm = result.min_norm * scale
    result.examples = {name: examples * scale + low for name, examples in result.examples.items()}
    return result


def _run_unit_box(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilons: Sequence[float],
    attacks: Sequence[str],
    certified_radius: torch.Tensor | np.ndarray | None,
    *,
    batch_size: int,
    device: str | torch.device | None,
    options: Mapping[str, Mapping[str, Any]] | None,
    prune: bool,
    progress: bool,
    n_examples: int,
    precision: str,
    compile_model: bool,
) -> SuiteResult:
    specs = _resolve_attacks(attacks, options)
    x, y, eps_list, radius = validate_inputs(x, y, epsilons, batch_size, certified_radius)
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 0:
        raise ValueError(f"n_examples must be an integer >= 0, got {n_examples!r}")
    n, k = len(x), min(n_examples, len(x))
    with prepared_target(model, device, x, y, precision, compile_model) as target:
        for spec, opts in specs:
            if spec.check is not None:
                spec.check(x, target.n_classes, opts)
        correct = np.concatenate([(target.predict(x[sl]) == y[sl]).numpy() for sl in batches(n, batch_size)])
        certified = None
        if radius is not None:
            certified = correct[None, :] & (radius.numpy()[None, :] > np.asarray(eps_list)[:, None])
        result = SuiteResult(
            epsilons=eps_list,
            attacks=[s.name for s, _ in specs],
            clean_correct=correct,
            certified=certified,
            success={},
            robust=np.zeros((len(eps_list), n), bool),
            min_norms={},
            min_norm=None,
            examples={},
            example_indices=np.arange(k),
            calls={},
            calls_unpruned={},
            certificate_violations=np.zeros(len(eps_list), int),
            pruned=prune,
            precision=precision,
            compiled=compile_model,
        )
        bar = tqdm(specs, desc="attacks", disable=tqdm_disable(progress), leave=False)
        for spec, opts in bar:
            bar.set_postfix_str(spec.name)
            start = time.perf_counter()
            if spec.minimal:
                _run_minimal(result, spec, opts, target, x, y, batch_size, progress)
            else:
                _run_eps(result, spec, opts, target, x, y, batch_size, prune, progress)
            result.seconds[spec.name] = time.perf_counter() - start
    _combine(result)
    return result


def _combine(result: SuiteResult) -> None:
    """The pointwise worst case over attacks: robust points, minimal norm, certificate violations."""
    broken = np.any(np.stack(list(result.success.values())), axis=0)
    result.robust = result.clean_correct[None, :] & ~broken
    if result.min_norms:
        result.min_norm = np.min(np.stack(list(result.min_norms.values())), axis=0)
    if result.certified is not None:
        result.certificate_violations = (result.certified & broken).sum(axis=1)
        if result.certificate_violations.any():
            logger.warning(
                "attacks broke certified points (%s per eps): the certificates are invalid",
                result.certificate_violations.tolist(),
            )


def _resolve_attacks(
    attacks: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None
) -> list[tuple[AttackSpec, dict[str, Any]]]:
    if isinstance(attacks, str):
        attacks = [attacks]
    attacks = list(attacks)
    if not attacks:
        raise ValueError(f"no attacks given; known attacks: {', '.join(ATTACKS.names())}")
    if len(set(attacks)) != len(attacks):
        raise ValueError(f"duplicate attack names in {attacks}")
    specs = [ATTACKS.get(name) for name in attacks]  # unknown name: RegistryError listing the known ones
    options = dict(options or {})
    extra = sorted(set(options) - set(attacks))
    if extra:
        raise ValueError(f"options given for attack {extra[0]!r}, which is not in the attack list {attacks}")
    return [(spec, spec.resolve_options(options.get(spec.name))) for spec in specs]


def _run_minimal(
    result: SuiteResult,
    spec: AttackSpec,
    opts: dict[str, Any],
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    progress: bool,
) -> None:
    n, eps = len(x), result.epsilons
    idx = np.flatnonzero(result.clean_correct)
    success = np.zeros((len(eps), n), bool)
    norms = np.zeros(n)  # a misclassified point needs no perturbation
    examples = np.full((len(result.example_indices), *x.shape[1:]), np.nan, np.float32)
    result.info[spec.name] = {"options": opts}
    if len(idx):
        res = spec.run(target, x[idx], y[idx], eps, batch_size=batch_size, options=opts, progress=progress)
        success[:, idx] = res.success
        norms[idx] = res.min_norm
        first = idx < len(examples)
        found = first & np.isfinite(res.min_norm)
        examples[idx[found]] = res.x_adv[torch.from_numpy(found)].numpy()
        result.info[spec.name] = res.info
    result.success[spec.name], result.min_norms[spec.name], result.examples[spec.name] = success, norms, examples
    result.calls[spec.name] = result.calls_unpruned[spec.name] = len(idx)


def _run_eps(
    result: SuiteResult,
    spec: AttackSpec,
    opts: dict[str, Any],
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    prune: bool,
    progress: bool,
) -> None:
    """Run an eps-ball attack at every radius, smallest first.

    With ``prune``, skip the points that certificates decide at eps and those this attack
    already broke at a smaller eps: the latter count as broken at eps with the example
    found there (carry-forward). A point broken at ``eps1`` thus stays broken at every
    ``eps2 > eps1`` even where a rerun at ``eps2`` would fail (attacks are not monotone),
    so success is monotone in eps and robust accuracy can only be lower than unpruned.
    """
    n, n_eps, k = len(x), len(result.epsilons), len(result.example_indices)
    success = np.zeros((n_eps, n), bool)
    examples = np.full((n_eps, k, *x.shape[1:]), np.nan, np.float32)
    broken = np.zeros(n, bool)  # broken at an eps visited earlier (pruned runs only)
    held = np.full(examples.shape[1:], np.nan, np.float32)  # their examples, for the first k points
    calls_by_eps, saved_by_certificates, saved_by_smaller_eps = [0] * n_eps, 0, 0
    result.info[spec.name] = {"options": opts}
    for e in (int(i) for i in np.argsort(result.epsilons, kind="stable")):
        eps = result.epsilons[e]
        attack = np.ones(n, bool)
        if prune:
            attack = _undecided_by_certificates(result, e)
            carried = attack & broken
            saved_by_certificates += n - int(attack.sum())
            saved_by_smaller_eps += int(carried.sum())
            success[e] = carried
            examples[e, carried[:k]] = held[carried[:k]]
            attack &= ~carried
        idx = np.flatnonzero(attack)
        calls_by_eps[e] = len(idx)
        if not len(idx):
            continue
        res = spec.run(target, x[idx], y[idx], [eps], batch_size=batch_size, options=opts, progress=progress)
        ok = res.success[0] & result.clean_correct[idx]
        success[e, idx] = ok
        first = ok & (idx < k)
        examples[e, idx[first]] = res.x_adv[0][torch.from_numpy(first)].numpy()
        if prune:
            broken[idx[ok]] = True
            held[idx[first]] = examples[e, idx[first]]
        result.info[spec.name] = res.info
    result.success[spec.name], result.examples[spec.name] = success, examples
    result.calls[spec.name], result.calls_unpruned[spec.name] = sum(calls_by_eps), n * n_eps
    result.calls_by_eps[spec.name] = calls_by_eps
    result.calls_saved_by_certificates[spec.name] = saved_by_certificates
    result.calls_saved_by_smaller_eps[spec.name] = saved_by_smaller_eps


def _undecided_by_certificates(result: SuiteResult, e: int) -> np.ndarray:
    """``(N,)`` points that certificates leave to an eps-ball attack at ``epsilons[e]``."""
    undecided = result.clean_correct & (result.epsilons[e] > 0)
    if result.certified is not None:
        undecided = undecided & ~result.certified[e]
    return undecided
