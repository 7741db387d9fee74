"""The paper's empirical-robustness protocol: every attack, pointwise worst case.

A point is *robust at eps* when it is correctly classified and no attack found a
verified adversarial example within eps. ``success`` arrays here only count correctly
classified points (a misclassified point is non-robust without any attack), which makes
them comparable between pruned and unpruned runs.

Certificate pruning (``prune=True``): at a given eps, a point is not handed to an
eps-ball attack when it is misclassified, when ``eps == 0``, or when
``certified_radius > eps``. The test is strict: a Lipschitz margin certificate
guarantees the decision for every ``||delta|| < radius``; at ``||delta|| == radius``
the margin can reach 0, a tie whose argmax depends on tie-breaking, so points with
``radius == eps`` are attacked. With a valid certificate the results are identical to
``prune=False``; a certified point broken by an attack (only observable unpruned) is
counted in ``certificate_violations``. Minimal-perturbation attacks (``cw_l2``,
``deepfool_l2``) are not eps-based: they run once on the correctly classified points
in both modes (pruning is not applicable) and their success per eps is derived from the
norm they found.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lipbench.evaluate.attacks.base import (
    ATTACKS,
    REL_TOL,
    AttackSpec,
    Target,
    batches,
    prepared_target,
    validate_inputs,
)

logger = logging.getLogger(__name__)

#: The paper's attack set (FGM is the paper's L2 "FGSM").
DEFAULT_ATTACKS = ("fgm", "pgd_l2", "cw_l2", "deepfool_l2", "autoattack_l2")


@dataclass
class SuiteResult:
    """Outcome of :func:`run_attack_suite` on ``N`` points and ``E`` radii (numpy, CPU).

    ``success[name]`` ``(E, N)``; ``robust`` ``(E, N)``; ``robust_accuracy`` ``(E,)``;
    ``min_norms[name]`` ``(N,)`` for minimal-perturbation attacks (0 for misclassified
    points, ``inf`` where none was found) and ``min_norm`` their pointwise minimum;
    ``examples[name]``: eps attacks ``(E, k, *shape)``, minimal attacks ``(k, *shape)``,
    verified adversarial examples of the first ``k`` points, NaN where there is none;
    ``calls[name]``: points (x radii, for eps attacks) handed to the attack, and
    ``calls_unpruned[name]`` the same without pruning.
    """

    epsilons: list[float]
    attacks: list[str]
    clean_correct: np.ndarray
    certified: np.ndarray | None
    success: dict[str, np.ndarray]
    robust: np.ndarray
    min_norms: dict[str, np.ndarray]
    min_norm: np.ndarray | None
    examples: dict[str, np.ndarray]
    example_indices: np.ndarray
    calls: dict[str, int]
    calls_unpruned: dict[str, int]
    certificate_violations: np.ndarray
    pruned: bool
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: eps attacks: points handed to the attack at each eps (unpruned: ``n_points`` each).
    calls_by_eps: dict[str, list[int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"  # what the attacks queried; verification is always float32
    compiled: bool = False

    @property
    def n_points(self) -> int:
        return len(self.clean_correct)

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.mean())

    @property
    def robust_accuracy(self) -> np.ndarray:
        """``(E,)`` fraction of points correct and unbroken by every attack."""
        return self.robust.mean(axis=1)

    @property
    def certified_accuracy(self) -> np.ndarray | None:
        return None if self.certified is None else self.certified.mean(axis=1)

    @property
    def calls_saved(self) -> int:
        return sum(self.calls_unpruned.values()) - sum(self.calls.values())

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable headline numbers and provenance."""
        certified = self.certified_accuracy
        return {
            "epsilons": self.epsilons,
            "attacks": self.attacks,
            "n_points": self.n_points,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy.tolist(),
            "certified_accuracy": None if certified is None else certified.tolist(),
            "attack_success_rate": {k: v.mean(axis=1).tolist() for k, v in self.success.items()},
            "calls": dict(self.calls),
            "calls_unpruned": dict(self.calls_unpruned),
            "calls_saved": self.calls_saved,
            "calls_by_eps": dict(self.calls_by_eps),
            "certificate_violations": self.certificate_violations.tolist(),
            "pruned": self.pruned,
            "precision": self.precision,
            "compiled": self.compiled,
            "seconds": dict(self.seconds),
            "info": _jsonable(self.info),
        }


def accuracy_from_min_norms(min_norm: np.ndarray, epsilons: Sequence[float]) -> np.ndarray:
    """``(E,)`` robust accuracy curve implied by minimal perturbation norms."""
    eps = np.asarray(epsilons, dtype=np.float64)[:, None]
    return (np.asarray(min_norm)[None, :] > eps * (1 + REL_TOL)).mean(axis=1)


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
        for spec, opts in specs:
            start = time.perf_counter()
            if spec.minimal:
                _run_minimal(result, spec, opts, target, x, y, batch_size, progress)
            else:
                _run_eps(result, spec, opts, target, x, y, batch_size, prune, progress)
            result.seconds[spec.name] = time.perf_counter() - start
    broken = np.any(np.stack(list(result.success.values())), axis=0)
    result.robust = correct[None, :] & ~broken
    if result.min_norms:
        result.min_norm = np.min(np.stack(list(result.min_norms.values())), axis=0)
    if certified is not None:
        result.certificate_violations = (certified & broken).sum(axis=1)
        if result.certificate_violations.any():
            logger.warning(
                "attacks broke certified points (%s per eps): the certificates are invalid",
                result.certificate_violations.tolist(),
            )
    return result


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
    n, eps_list = len(x), result.epsilons
    success = np.zeros((len(eps_list), n), bool)
    examples = np.full((len(eps_list), len(result.example_indices), *x.shape[1:]), np.nan, np.float32)
    calls = 0
    calls_by_eps = [0] * len(eps_list)
    result.info[spec.name] = {"options": opts}
    for e, eps in enumerate(eps_list):
        attack = np.ones(n, bool)
        if prune:
            attack &= result.clean_correct & (eps > 0)
            if result.certified is not None:
                attack &= ~result.certified[e]
        idx = np.flatnonzero(attack)
        if not len(idx):
            continue
        res = spec.run(target, x[idx], y[idx], [eps], batch_size=batch_size, options=opts, progress=progress)
        calls += len(idx)
        calls_by_eps[e] = len(idx)
        ok = res.success[0] & result.clean_correct[idx]
        success[e, idx] = ok
        first = ok & (idx < examples.shape[1])
        examples[e, idx[first]] = res.x_adv[0][torch.from_numpy(first)].numpy()
        result.info[spec.name] = res.info
    result.success[spec.name], result.examples[spec.name] = success, examples
    result.calls[spec.name], result.calls_unpruned[spec.name] = calls, n * len(eps_list)
    result.calls_by_eps[spec.name] = calls_by_eps


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
