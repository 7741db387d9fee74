"""Attack registry, result type and the shared machinery every attack uses.

An attack is registered with :func:`register_attack` as an :class:`AttackSpec`. Calling a
spec runs the attack on a plain torch model with inputs in ``[0, 1]`` and returns an
:class:`AttackResult` whose success flags were *verified here*: every returned point is
clipped to ``[0, 1]``, its L2 distance to the clean point is recomputed (and, for
eps-ball attacks, projected onto the eps-ball when it lies outside), and the model is
evaluated again on it. A library's own success flag is never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from lipbench.curves import REL_TOL
from lipbench.nn.certificates import predictions
from lipbench.registry import Registry

#: Arithmetic the attacks search in. Verification (``Target.predict``) is always float32.
ATTACK_PRECISIONS = ("fp32", "bf16")


@dataclass
class AttackResult:
    """What one attack found on ``N`` points at ``E`` radii (all arrays on CPU).

    ``success[e, i]``: a point ``x_adv`` with ``||x_adv - x_i||_2 <= eps_e * (1 + REL_TOL)``
    and ``prediction(x_adv) != y_i`` was found and re-checked on the model. A point that
    is already misclassified counts as a success (the clean point itself is adversarial).
    ``x_adv``: eps-ball attacks ``(E, N, *shape)`` (the attack's final point, clipped and
    projected; adversarial only where ``success``); minimal-perturbation attacks
    ``(N, *shape)``. ``min_norm``: minimal-perturbation attacks only, ``(N,)`` L2 norm of
    the verified adversarial found, ``inf`` where none was found.
    """

    name: str
    epsilons: list[float]
    success: np.ndarray
    x_adv: torch.Tensor
    min_norm: np.ndarray | None = None
    n_attacked: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class BinaryAsTwoLogits(nn.Module):
    """Views a single-logit binary model ``f`` as the two logits ``[-f/2, f/2]``.

    ``argmax`` is 1 exactly when ``f > 0`` (at ``f == 0`` both logits tie and
    ``torch.argmax`` returns the first index, 0), which is the binary decision rule; the
    logit gap is ``f`` itself and softmax cross-entropy becomes the logistic loss. The
    wrapper is only used to attack, so its Lipschitz constant does not matter.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.model(x) / 2
        return torch.cat([-half, half], dim=1)


class AutocastLogits(nn.Module):
    """``model`` run under ``torch.autocast(dtype)``, returning float32 logits.

    Attacks query this (faster on GPUs with bf16 units); the points they return are then
    re-checked on the float32 model, so reduced precision changes the search (it may make
    an attack weaker) but can never create a false success.
    """

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.model(x)
        return out.float()


@dataclass
class Target:
    """The model under attack, already in eval mode on ``device``.

    ``model`` is the float32 model that every success is verified on; ``net`` is what the
    attacks query: the same model, seen as two logits if binary, possibly under bf16
    autocast and/or compiled (see :func:`prepared_target`).
    """

    model: nn.Module
    net: nn.Module  # at least two logits (``BinaryAsTwoLogits`` for single-logit models)
    n_classes: int  # number of logits of ``net``
    binary: bool
    device: torch.device

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels from the original model (``f > 0`` for a single logit), on CPU."""
        return predictions(self.model(x.to(self.device))).cpu()


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: ``run(target, x, y, epsilons, batch_size=, options=, progress=)``."""

    name: str
    run: Callable[..., AttackResult]
    defaults: Mapping[str, Any]
    minimal: bool  # minimal-perturbation attack (run once, success per eps derived)
    description: str = ""
    validate: Callable[[dict[str, Any]], None] | None = None  # options only, no model needed
    check: Callable[[torch.Tensor, int, dict[str, Any]], None] | None = None  # needs the class count

    def resolve_options(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults updated with ``options``; an unknown key is a ``ValueError``."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"unknown option {unknown[0]!r} for attack {self.name!r}; "
                f"accepted options: {', '.join(sorted(self.defaults)) or '(none)'}"
            )
        resolved = {**self.defaults, **options}
        if self.validate is not None:
            self.validate(resolved)
        return resolved

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        epsilons: Sequence[float],
        *,
        batch_size: int = 128,
        device: str | torch.device | None = None,
        options: Mapping[str, Any] | None = None,
        progress: bool = False,
        precision: str = "fp32",
        compile_model: bool = False,
    ) -> AttackResult:
        """Validate, prepare the model, run the attack and return verified results."""
        resolved = self.resolve_options(options)
        x, y, eps, _ = validate_inputs(x, y, epsilons, batch_size)
        with prepared_target(model, device, x, y, precision, compile_model) as target:
            if self.check is not None:
                self.check(x, target.n_classes, resolved)
            return self.run(target, x, y, eps, batch_size=batch_size, options=resolved, progress=progress)


ATTACKS: Registry[AttackSpec] = Registry("attack", entry_point_group="lipbench.attacks")


def register_attack(
    name: str,
    *,
    minimal: bool,
    defaults: Mapping[str, Any],
    validate: Callable[[dict[str, Any]], None] | None = None,
    check: Callable[[torch.Tensor, int, dict[str, Any]], None] | None = None,
) -> Callable[[Callable[..., AttackResult]], Callable[..., AttackResult]]:
    """Decorator registering a run function as ``ATTACKS[name]``."""

    def decorator(run: Callable[..., AttackResult]) -> Callable[..., AttackResult]:
        doc = (run.__doc__ or "").strip().splitlines()
        spec = AttackSpec(name, run, MappingProxyType(dict(defaults)), minimal, doc[0] if doc else "", validate, check)
        ATTACKS.register(name)(spec)
        return run

    return decorator


# ----------------------------------------------------------------------------- inputs


def validate_inputs(
    x: Any, y: Any, epsilons: Sequence[float], batch_size: int, certified_radius: Any = None
) -> tuple[torch.Tensor, torch.Tensor, list[float], torch.Tensor | None]:
    """Check everything that can be checked without the model; return CPU tensors."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(epsilons, (str, bytes)) or not isinstance(epsilons, (Sequence, np.ndarray, torch.Tensor)):
        raise ValueError(f"epsilons must be a sequence of floats, got {epsilons!r}")
    eps = [float(e) for e in epsilons]
    if not eps:
        raise ValueError("epsilons is empty")
    bad = [e for e in eps if not math.isfinite(e) or e < 0]
    if bad:
        raise ValueError(f"epsilons must be finite and >= 0, got {bad[0]!r}")
    x = torch.as_tensor(x).detach().cpu()
    if not x.is_floating_point() or x.ndim < 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty float tensor of shape (N, ...), got {x.dtype} {tuple(x.shape)}")
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"x must lie in [0, 1] (bounds (0, 1)), got values in [{x.min():.4g}, {x.max():.4g}]")
    y = torch.as_tensor(y).detach().cpu()
    if y.ndim != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must be a 1-D integer tensor of labels, got {y.dtype} {tuple(y.shape)}")
    if len(y) != len(x):
        raise ValueError(f"x and y lengths differ: {len(x)} != {len(y)}")
    if (y < 0).any():
        raise ValueError("y contains negative labels")
    y = y.long()
    radius = None
    if certified_radius is not None:
        radius = torch.as_tensor(certified_radius).detach().cpu().double().reshape(-1)
        if len(radius) != len(x):
            raise ValueError(f"x and certified_radius lengths differ: {len(x)} != {len(radius)}")
        if torch.isnan(radius).any():
            raise ValueError("certified_radius contains NaN")
    return x, y, eps, radius


def check_precision(precision: Any, compile_model: Any) -> None:
    """``ValueError`` unless ``precision`` is one of :data:`ATTACK_PRECISIONS` and ``compile_model`` a bool."""
    if precision not in ATTACK_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(ATTACK_PRECISIONS)}, got {precision!r}")
    if not isinstance(compile_model, bool):
        raise ValueError(f"compile_model must be True or False, got {compile_model!r}")


@contextlib.contextmanager
def prepared_target(
    model: nn.Module,
    device: str | torch.device | None,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str = "fp32",
    compile_model: bool = False,
) -> Iterator[Target]:
    """Eval mode, parameters frozen, on ``device``; restores mode and ``requires_grad`` after.

    ``precision="bf16"`` makes the attacks' view of the model run under autocast and
    ``compile_model`` compiles it (``torch.compile``, dynamic shapes); ``Target.predict``,
    which verifies every success, always runs the float32 model uncompiled.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_precision(precision, compile_model)
    params = list(model.parameters())
    if device is None:
        device = params[0].device if params else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training
    requires_grad = [p.requires_grad for p in params]
    model.eval().to(device)
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            out = model(x[:1].to(device))
        if out.ndim != 2 or out.shape[0] != 1:
            raise ValueError(f"the model must output logits of shape (N, K), got {tuple(out.shape)} for N=1")
        k = out.shape[1]
        binary = k == 1
        n_classes = 2 if binary else k
        if int(y.max()) >= n_classes:
            raise ValueError(f"label {int(y.max())} out of range for a model with {n_classes} classes")
        net = BinaryAsTwoLogits(model).eval() if binary else model
        if precision == "bf16":
            net = AutocastLogits(net, device.type).eval()
        if compile_model:
            net = torch.compile(net, dynamic=True)
        yield Target(model, net, n_classes, binary, device)
    finally:
        model.train(was_training)
        for p, flag in zip(params, requires_grad):
            p.requires_grad_(flag)


# ----------------------------------------------------------------------------- helpers


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def l2_distance(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Per-point L2 distance, computed in float64."""
    return (x_adv.double() - x.double()).flatten(1).norm(dim=1)


def verify_in_ball(
    target: Target, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, eps: float
) -> tuple[torch.Tensor, np.ndarray]:
    """Clip to [0, 1], project onto the eps-ball if outside, re-evaluate the model.

    The projection target leaves room for float32 rounding of every coordinate, so the
    stored point is within ``eps * (1 + REL_TOL)`` of ``x`` by construction; the distance
    is still recomputed and required.
    """
    x_adv = x_adv.detach().cpu().float().clamp(0.0, 1.0)
    dist = l2_distance(x, x_adv)
    outside = dist > eps
    if outside.any():
        dim = x[0].numel()
        target_norm = max(eps * (1 - REL_TOL) - math.sqrt(dim) * 2.0**-24, 0.0)
        scale = (target_norm / dist[outside]).view(-1, *([1] * (x.ndim - 1)))
        delta = x_adv[outside].double() - x[outside].double()
        x_adv[outside] = (x[outside].double() + delta * scale).float().clamp(0.0, 1.0)
        dist = l2_distance(x, x_adv)
    within = dist <= eps * (1 + REL_TOL)
    success = (target.predict(x_adv) != y) & within
    return x_adv, success.numpy()


def verify_minimal(target: Target, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Clip to [0, 1], re-evaluate; return the points and their norms (``inf`` if not adversarial).

    An already misclassified point is its own minimal adversarial example (norm 0).
    """
    x_adv = x_adv.detach().cpu().float().clamp(0.0, 1.0)
    misclassified = target.predict(x) != y
    x_adv[misclassified] = x[misclassified]
    dist = l2_distance(x, x_adv).numpy()
    adversarial = (target.predict(x_adv) != y).numpy()
    return x_adv, np.where(adversarial, dist, np.inf)


def success_from_norms(min_norm: np.ndarray, epsilons: Sequence[float]) -> np.ndarray:
    """``(E, N)``: the verified minimal perturbation fits in the eps-ball."""
    eps = np.asarray(epsilons, dtype=np.float64)[:, None]
    return np.asarray(min_norm, dtype=np.float64)[None, :] <= eps * (1 + REL_TOL)


def point_seeds(x: torch.Tensor, seed: int, salt: str) -> list[int]:
    """One seed per point from its bytes: the same point gets the same seed in any batch."""
    prefix = f"{seed}:{salt}:".encode()
    rows = x.detach().cpu().float().contiguous().numpy().reshape(len(x), -1)
    return [int.from_bytes(hashlib.blake2b(prefix + r.tobytes(), digest_size=8).digest(), "little") >> 1 for r in rows]


def unit_ball_noise(x: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """Uniform samples in the unit L2 ball (Voelker et al.: first D of a (D+2)-sphere point)."""
    dim = x[0].numel()
    out = torch.empty(len(seeds), dim)
    generator = torch.Generator()
    for i, s in enumerate(seeds):
        generator.manual_seed(s)
        g = torch.randn(dim + 2, generator=generator, dtype=torch.float64)
        out[i] = (g / g.norm())[:dim].float()
    return out.view_as(x)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for the block without disturbing the caller's random state."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def check_int(options: Mapping[str, Any], key: str, minimum: int, name: str, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``options[key]`` is an int >= minimum (or None if allowed)."""
    value = options[key]
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"option {key!r} of attack {name!r} must be an integer >= {minimum}, got {value!r}")


def check_float(options: Mapping[str, Any], key: str, minimum: float, name: str, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``options[key]`` is a finite number >= minimum."""
    value = options[key]
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"option {key!r} of attack {name!r} must be a finite number >= {minimum}, got {value!r}")
