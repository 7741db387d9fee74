"""The paper's foolbox 3 attacks, all L2: FGM, PGD and DeepFool (Carlini-Wagner: ``carlini_wagner``).

The paper's "FGSM" is the L2 fast gradient method, ``foolbox.attacks.FGM``
(``L2FastGradientAttack``); foolbox's ``FGSM`` is the L-inf sign method and is not used.
Option defaults are foolbox 3.3.4's constructor defaults, plus a ``seed`` for random
starts. Random starts are drawn per point from a seed derived from the point's bytes,
so a point's result does not depend on which other points share its batch (this is what
makes certificate pruning give results identical to an unpruned run).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import eagerpy as ep
import numpy as np
import torch
from tqdm.auto import tqdm

from lipbench.evaluate.attacks.base import (
    AttackResult,
    Target,
    batches,
    check_float,
    check_int,
    point_seeds,
    register_attack,
    success_from_norms,
    unit_ball_noise,
    verify_in_ball,
    verify_minimal,
)
from lipbench.progress import tqdm_disable

with warnings.catch_warnings():  # foolbox 3.3.4 imports a deprecated scipy.ndimage namespace
    warnings.simplefilter("ignore", DeprecationWarning)
    import foolbox as fb


class _DropTopCandidatesInfo(logging.Filter):
    """foolbox's DeepFool logs "Only testing the top-k classes" on the root logger per batch."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Only testing the top-")


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root, flt = logging.getLogger(), _DropTopCandidatesInfo()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


class _PerPointRandomStart:
    """Mixin replacing foolbox's batch-wide random start by per-point seeded noise."""

    start_noise: torch.Tensor | None = None

    def get_random_start(self, x0: ep.Tensor, epsilon: float) -> ep.Tensor:
        assert self.start_noise is not None, "set start_noise before running"
        noise = ep.astensor(self.start_noise.to(x0.raw.device, x0.raw.dtype)).reshape(x0.shape)
        return x0 + epsilon * noise


class _FGM(_PerPointRandomStart, fb.attacks.L2FastGradientAttack):
    pass


class _PGD(_PerPointRandomStart, fb.attacks.L2ProjectedGradientDescentAttack):
    pass


def _run_eps_attack(
    name: str,
    attack: _PerPointRandomStart,
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilons: list[float],
    batch_size: int,
    seed: int,
    progress: bool,
) -> AttackResult:
    fmodel = fb.PyTorchModel(target.net, bounds=(0, 1), device=target.device)
    success = np.zeros((len(epsilons), len(x)), dtype=bool)
    x_adv = x.unsqueeze(0).repeat(len(epsilons), *([1] * x.ndim))
    for e, eps in enumerate(epsilons):
        for sl in tqdm(
            list(batches(len(x), batch_size)), desc=f"{name} eps={eps:g}", disable=tqdm_disable(progress), leave=False
        ):
            if eps == 0:  # nothing moves: only already-misclassified points "succeed"
                x_adv[e, sl], success[e, sl] = verify_in_ball(target, x[sl], y[sl], x[sl], 0.0)
                continue
            if attack.random_start:
                attack.start_noise = unit_ball_noise(x[sl], point_seeds(x[sl], seed, name))
            with torch.enable_grad():
                _, clipped, _ = attack(fmodel, x[sl].to(target.device), y[sl].to(target.device), epsilons=eps)
            x_adv[e, sl], success[e, sl] = verify_in_ball(target, x[sl], y[sl], clipped, eps)
    return AttackResult(name, list(epsilons), success, x_adv, n_attacked=len(x) * len(epsilons))


def _run_minimal_attack(
    name: str,
    attack: fb.attacks.base.MinimizationAttack,
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilons: list[float],
    batch_size: int,
    progress: bool,
) -> AttackResult:
    fmodel = fb.PyTorchModel(target.net, bounds=(0, 1), device=target.device)
    x_adv = x.clone()
    min_norm = np.full(len(x), np.inf)
    for sl in tqdm(list(batches(len(x), batch_size)), desc=name, disable=tqdm_disable(progress), leave=False):
        with torch.enable_grad(), _quiet_root_logger():
            raw, _, _ = attack(fmodel, x[sl].to(target.device), y[sl].to(target.device), epsilons=None)
        x_adv[sl], min_norm[sl] = verify_minimal(target, x[sl], y[sl], raw)
    success = success_from_norms(min_norm, epsilons)
    return AttackResult(name, list(epsilons), success, x_adv, min_norm=min_norm, n_attacked=len(x))


def _validator(
    name: str, ints: dict[str, int], floats: dict[str, float], bools: tuple[str, ...] = ()
) -> Callable[[dict[str, Any]], None]:
    def validate(options: dict[str, Any]) -> None:
        for key, minimum in ints.items():
            check_int(options, key, minimum, name, allow_none=key == "candidates")
        for key, minimum in floats.items():
            check_float(options, key, minimum, name, allow_none=key == "abs_stepsize")
        for key in bools:
            if not isinstance(options[key], bool):
                raise ValueError(f"option {key!r} of attack {name!r} must be a bool, got {options[key]!r}")

    return validate


@register_attack(
    "fgm",
    minimal=False,
    defaults={"random_start": False, "seed": 0},
    validate=_validator("fgm", {"seed": 0}, {}, ("random_start",)),
)
def fgm(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilons: list[float],
    *,
    batch_size: int,
    options: dict[str, Any],
    progress: bool = False,
) -> AttackResult:
    """L2 fast gradient method (one step of size eps along the normalised CE gradient)."""
    attack = _FGM(random_start=options["random_start"])
    result = _run_eps_attack("fgm", attack, target, x, y, epsilons, batch_size, options["seed"], progress)
    result.info = {"library": "foolbox", "foolbox_version": fb.__version__, "foolbox_attack": "FGM", "options": options}
    return result


@register_attack(
    "pgd_l2",
    minimal=False,
    defaults={"steps": 50, "rel_stepsize": 0.025, "abs_stepsize": None, "random_start": True, "seed": 0},
    validate=_validator("pgd_l2", {"steps": 1, "seed": 0}, {"rel_stepsize": 0.0, "abs_stepsize": 0.0}, ("random_start",)),
)
def pgd_l2(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilons: list[float],
    *,
    batch_size: int,
    options: dict[str, Any],
    progress: bool = False,
) -> AttackResult:
    """L2 projected gradient descent on the cross-entropy (foolbox ``L2PGD``)."""
    attack = _PGD(
        steps=options["steps"],
        rel_stepsize=options["rel_stepsize"],
        abs_stepsize=options["abs_stepsize"],
        random_start=options["random_start"],
    )
    result = _run_eps_attack("pgd_l2", attack, target, x, y, epsilons, batch_size, options["seed"], progress)
    result.info = {"library": "foolbox", "foolbox_version": fb.__version__, "foolbox_attack": "L2PGD", "options": options}
    return result


def _validate_deepfool(options: dict[str, Any]) -> None:
    _validator("deepfool_l2", {"steps": 1, "candidates": 2}, {"overshoot": 0.0})(options)
    if options["loss"] not in ("logits", "crossentropy"):
        raise ValueError(f"option 'loss' of attack 'deepfool_l2' must be 'logits' or 'crossentropy', got {options['loss']!r}")


@register_attack(
    "deepfool_l2",
    minimal=True,
    defaults={"steps": 50, "candidates": 10, "overshoot": 0.02, "loss": "logits"},
    validate=_validate_deepfool,
)
def deepfool_l2(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilons: list[float],
    *,
    batch_size: int,
    options: dict[str, Any],
    progress: bool = False,
) -> AttackResult:
    """DeepFool L2 (minimal perturbation; success per eps derived from its norm)."""
    attack = fb.attacks.L2DeepFoolAttack(**options)
    result = _run_minimal_attack("deepfool_l2", attack, target, x, y, epsilons, batch_size, progress)
    result.info = {
        "library": "foolbox",
        "foolbox_version": fb.__version__,
        "foolbox_attack": "L2DeepFoolAttack",
        "options": options,
    }
    return result
