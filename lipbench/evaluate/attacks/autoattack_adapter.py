"""AutoAttack (Croce & Hein, 2020), L2, as one eps-ball attack per radius.

Two implementations of the same code are supported:

* ``pyautoattack`` (PyPI): ``AutoAttack(model, *, attacks=None, device='cpu', eps=0.3,
  norm='Linf', seed=None, version='standard')`` (keyword-only; the attack list is
  ``attacks`` and is only accepted with ``version='custom'``), and
  ``run_standard_evaluation(x, y, /, *, batch_size=250, state_path=None)`` returning
  ``(x_adv, y_adv)``; it reports through ``logging.getLogger('auto-attack')``.
* ``autoattack`` (fra31/auto-attack, installs from git only): ``AutoAttack(model,
  norm='Linf', eps=.3, seed=None, verbose=True, attacks_to_run=[], version='standard',
  is_tf_model=False, device='cuda', log_path=None)`` and ``run_standard_evaluation(x, y,
  bs=250, return_labels=False)`` returning ``x_adv``; it reports by printing.

``pyautoattack`` is preferred when importable. Class-count requirements, read from the
code: the DLR loss uses the 3rd largest logit (>= 3 classes), the targeted DLR loss the
4th (>= 4 classes), and targeted attacks index the ``n_target_classes + 1``-th largest
logit (so ``n_target_classes <= K - 1``; the standard value 9 assumes K >= 10). Hence:
K >= 4: ``standard`` (APGD-CE, APGD-T, FAB-T, Square) with ``min(9, K-1)`` targets;
K == 3: ``custom`` APGD-CE, APGD-DLR, FAB-T, Square; K == 2 (binary): ``custom``
APGD-CE, FAB, Square. Custom runs use the standard version's restarts (1) and queries.
Square's L2 initialisation tiles the image in 5x5 blocks, so inputs must be images
``(N, C, H, W)`` with ``H, W >= 5``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lipbench.evaluate.attacks.base import (
    AttackResult,
    Target,
    batches,
    check_int,
    register_attack,
    seeded,
    verify_in_ball,
)
from lipbench.progress import tqdm_disable

STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
#: Fewest classes (logits) each AutoAttack component works with.
MIN_CLASSES = {"apgd-ce": 2, "apgd-dlr": 3, "fab": 2, "square": 2, "apgd-t": 4, "fab-t": 2}
INSTALL_HINT = (
    "install AutoAttack with `pip install pyautoattack` (registry build of fra31/auto-attack, "
    "imported as `pyautoattack`) or `pip install git+https://github.com/fra31/auto-attack` "
    "(imported as `autoattack`)"
)


@dataclass(frozen=True)
class AutoAttackImplementation:
    """Which AutoAttack package is used, and how to call it."""

    name: str  # "pyautoattack" or "autoattack"
    version: str
    cls: type

    def build(
        self, net: torch.nn.Module, *, eps: float, version: str, attacks: list[str], seed: int, device: torch.device
    ) -> Any:
        if self.name == "pyautoattack":
            return self.cls(
                net,
                attacks=attacks if version == "custom" else None,
                device=device,
                eps=eps,
                norm="L2",
                seed=seed,
                version=version,
            )
        return self.cls(
            net,
            norm="L2",
            eps=eps,
            seed=seed,
            verbose=False,
            attacks_to_run=attacks if version == "custom" else [],
            version=version,
            device=device,
        )

    def run(self, adversary: Any, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
        if self.name == "pyautoattack":
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
            return x_adv
        return adversary.run_standard_evaluation(x, y, bs=batch_size)


def load_autoattack(preference: str = "auto") -> AutoAttackImplementation:
    """Import ``pyautoattack`` (preferred) or ``autoattack``; ``ImportError`` says how to install."""
    order = ["pyautoattack", "autoattack"] if preference == "auto" else [preference]
    tried = []
    for name in order:
        try:
            module = importlib.import_module(name)
            cls = module.AutoAttack
        except (ImportError, AttributeError) as exc:
            tried.append(f"{name} ({exc})")
            continue
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = str(getattr(module, "__version__", "unknown"))
        return AutoAttackImplementation(name, version, cls)
    raise ImportError(f"AutoAttack is not available: tried {', '.join(tried)}; {INSTALL_HINT}")


def plan(n_classes: int, options: dict[str, Any]) -> tuple[str, list[str], int]:
    """(version actually run, attack list, number of target classes) for ``n_classes`` logits."""
    n_targets = options["n_target_classes"] or min(9, n_classes - 1)
    if n_targets > n_classes - 1:
        raise ValueError(
            f"autoattack_l2: n_target_classes={n_targets} but a {n_classes}-class model has only {n_classes - 1} other classes"
        )
    if options["version"] == "custom":
        attacks = list(options["attacks"])
        too_few = [a for a in attacks if MIN_CLASSES[a] > n_classes]
        if too_few:
            raise ValueError(
                f"autoattack_l2: {too_few[0]!r} needs at least {MIN_CLASSES[too_few[0]]} classes, the model has {n_classes}"
            )
        return "custom", attacks, n_targets
    if n_classes >= 4:
        return "standard", list(STANDARD_ATTACKS), n_targets
    if n_classes == 3:
        return "custom", ["apgd-ce", "apgd-dlr", "fab-t", "square"], n_targets
    return "custom", ["apgd-ce", "fab", "square"], n_targets


def _validate(options: dict[str, Any]) -> None:
    if options["implementation"] not in ("auto", "pyautoattack", "autoattack"):
        raise ValueError(
            f"option 'implementation' of attack 'autoattack_l2' must be 'auto', 'pyautoattack' "
            f"or 'autoattack', got {options['implementation']!r}"
        )
    if options["version"] not in ("standard", "custom"):
        raise ValueError(f"option 'version' of attack 'autoattack_l2' must be 'standard' or 'custom', got {options['version']!r}")
    attacks = options["attacks"]
    if options["version"] == "custom":
        if not attacks or isinstance(attacks, str) or any(a not in MIN_CLASSES for a in attacks):
            raise ValueError(
                f"option 'attacks' of attack 'autoattack_l2' must be a non-empty list drawn from "
                f"{', '.join(MIN_CLASSES)} when version='custom', got {attacks!r}"
            )
    elif attacks is not None:
        raise ValueError("option 'attacks' of attack 'autoattack_l2' needs version='custom'")
    check_int(options, "seed", 0, "autoattack_l2")
    for key in ("n_iter", "square_n_queries", "n_target_classes"):
        check_int(options, key, 1, "autoattack_l2", allow_none=True)
    load_autoattack(options["implementation"])  # a missing package fails before any work


def _check(x: torch.Tensor, n_classes: int, options: dict[str, Any]) -> None:
    _, attacks, _ = plan(n_classes, options)
    if "square" in attacks and (x.ndim != 4 or min(x.shape[2], x.shape[3]) < 5):
        raise ValueError(
            f"autoattack_l2: Square's L2 initialisation needs images (N, C, H, W) with H, W >= 5, got {tuple(x.shape)}; "
            "for other inputs use version: custom with attacks: [apgd-ce, fab]"
        )


class _AsImages(torch.nn.Module):
    """Show non-image inputs ``(N, *shape)`` to AutoAttack as ``(N, 1, 1, D)`` images."""

    def __init__(self, net: torch.nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.net, self.shape = net, shape

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.reshape(len(z), *self.shape))


def _configure(adversary: Any, version: str, n_targets: int, options: dict[str, Any]) -> None:
    adversary.apgd_targeted.n_target_classes = n_targets
    adversary.fab.n_target_classes = n_targets
    if version == "custom":  # the standard version's settings (custom keeps the constructor's 5 restarts)
        adversary.apgd.n_restarts = adversary.fab.n_restarts = adversary.apgd_targeted.n_restarts = 1
        adversary.square.n_queries = 5000
    if options["n_iter"] is not None:
        n = options["n_iter"]
        for apgd in (adversary.apgd, adversary.apgd_targeted):
            apgd.n_iter = apgd.n_iter_orig = n
            # checkpoints APGD derives from n_iter in its constructor
            apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr = (max(int(f * n), 1) for f in (0.22, 0.06, 0.03))
        adversary.fab.n_iter = n
    if options["square_n_queries"] is not None:
        adversary.square.n_queries = options["square_n_queries"]


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@contextlib.contextmanager
def _quiet(sink: list[str]) -> Iterator[None]:
    """Collect AutoAttack's warnings (logger, prints, ``warnings``) instead of printing them."""
    logger = logging.getLogger("auto-attack")
    handler, propagate = _Collect(sink), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        sink.extend(str(w.message) for w in caught)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        sink.extend(line.strip() for line in out.getvalue().splitlines() if line.strip())


@register_attack(
    "autoattack_l2",
    minimal=False,
    defaults={
        "implementation": "auto",
        "version": "standard",
        "attacks": None,
        "seed": 0,
        "n_iter": None,
        "square_n_queries": None,
        "n_target_classes": None,
    },
    validate=_validate,
    check=_check,
)
def autoattack_l2(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilons: list[float],
    *,
    batch_size: int,
    options: dict[str, Any],
    progress: bool = False,
) -> AttackResult:
    """AutoAttack L2 (standard version where the class count allows), one run per eps."""
    impl = load_autoattack(options["implementation"])
    version, attacks, n_targets = plan(target.n_classes, options)
    success = np.zeros((len(epsilons), len(x)), dtype=bool)
    x_adv = x.unsqueeze(0).repeat(len(epsilons), *([1] * x.ndim))
    messages: list[str] = []
    adversary = None
    for e, eps in enumerate(epsilons):
        for sl in tqdm(
            list(batches(len(x), batch_size)), desc=f"autoattack_l2 eps={eps:g}", disable=tqdm_disable(progress), leave=False
        ):
            if eps == 0:
                x_adv[e, sl], success[e, sl] = verify_in_ball(target, x[sl], y[sl], x[sl], 0.0)
                continue
            with seeded(options["seed"], target.device), _quiet(messages):
                net, inputs = target.net, x[sl].to(target.device)
                if x.ndim != 4:
                    net, inputs = _AsImages(target.net, tuple(x.shape[1:])), inputs.reshape(len(inputs), 1, 1, -1)
                adversary = impl.build(net, eps=eps, version=version, attacks=attacks, seed=options["seed"], device=target.device)
                _configure(adversary, version, n_targets, options)
                found = impl.run(adversary, inputs, y[sl].to(target.device), batch_size).reshape(x[sl].shape)
            x_adv[e, sl], success[e, sl] = verify_in_ball(target, x[sl], y[sl], found, eps)
    info = {
        "library": "autoattack",
        "implementation": impl.name,
        "implementation_version": impl.version,
        "norm": "L2",
        "version_requested": options["version"],
        "version": version,
        "attacks": attacks,
        "n_target_classes": n_targets,
        "seed": options["seed"],
        "options": options,
        "n_iter": None if adversary is None else adversary.apgd.n_iter,
        "square_n_queries": None if adversary is None else adversary.square.n_queries,
        "warnings": list(dict.fromkeys(messages))[:20],
    }
    return AttackResult("autoattack_l2", list(epsilons), success, x_adv, n_attacked=len(x) * len(epsilons), info=info)
