"""Evaluation settings of a profile: ``evaluate.<dataset>`` plus the common ``evaluate`` keys.

Everything is checked when the settings are read, before any model is loaded. The attack
precision and compile options change how attacks *search* (speed on GPUs), never how
their results are checked: certificates, the re-evaluation of every adversarial example
and the soundness gate always run the exported model in float32.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lipbench.evaluate.attacks import ATTACK_PRECISIONS, ATTACKS
from lipbench.evaluate.verification import VerifyOptions
from lipbench.profiles import Profile, ProfileError

__all__ = ["EvaluationSettings", "evaluation_settings"]

_VERIFY_DEFAULTS = dataclasses.asdict(VerifyOptions())


@dataclass(frozen=True)
class EvaluationSettings:
    """One dataset's evaluation settings in a profile (see the module docstring)."""

    epsilons: list[float]
    certify_points: int
    attack_points: int
    deepfool_points: int
    attacks: list[str]
    attack_options: dict[str, dict[str, Any]]
    headline_eps: float
    batch_size: int
    device: str
    workers: int
    verify: VerifyOptions = field(default_factory=VerifyOptions)
    attack_precision: str = "fp32"  # "bf16": attacks search under autocast; checks stay float32
    attack_compile: bool = False  # torch.compile the model the attacks query

    def for_stage(self, stage: str) -> dict[str, Any]:
        """The settings a stage's results depend on (part of its fingerprint)."""
        keys = {
            "certify": ("epsilons", "certify_points"),
            "attack": (
                "epsilons",
                "headline_eps",
                "attack_points",
                "deepfool_points",
                "attacks",
                "attack_options",
                "attack_precision",
                "attack_compile",
            ),
            "verify": ("verify", "certify_points"),
        }[stage]
        return {key: dataclasses.asdict(self.verify) if key == "verify" else getattr(self, key) for key in keys}


def _positive_int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProfileError(f"{where} must be an integer >= 1, got {value!r}")
    return value


def _epsilons(where: str, epsilons: Any) -> list:
    if not isinstance(epsilons, list) or not epsilons:
        raise ProfileError(f"{where}.epsilons must be a non-empty list of numbers >= 0")
    for eps in epsilons:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not np.isfinite(eps) or eps < 0:
            raise ProfileError(f"{where}.epsilons: every eps must be a finite number >= 0, got {eps!r}")
    return epsilons


def evaluation_settings(profile: Profile, dataset: str) -> EvaluationSettings:
    """``evaluate.<dataset>`` (+ ``evaluate.batch_size/device/workers/verify``), checked up front."""
    where = f"{profile.path}: evaluate.{dataset}"
    section = profile.section("evaluate", dataset)
    common = profile.section("evaluate")
    allowed = {"epsilons", "headline_eps", "certify_points", "attack_points", "deepfool_points", "attacks", "attack_options"}
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ProfileError(f"{where}: unknown keys {', '.join(unknown)}; accepted: {', '.join(sorted(allowed))}")
    epsilons = _epsilons(where, section.get("epsilons"))
    headline = section.get("headline_eps", epsilons[len(epsilons) // 2])
    if headline not in epsilons:
        raise ProfileError(f"{where}.headline_eps ({headline!r}) must be one of its epsilons {epsilons}")
    certify_points = _positive_int(f"{where}.certify_points", section.get("certify_points", 1000))
    attack_points = _positive_int(f"{where}.attack_points", section.get("attack_points", 200))
    deepfool_points = _positive_int(f"{where}.deepfool_points", section.get("deepfool_points", attack_points))
    if max(attack_points, deepfool_points) > certify_points:
        raise ProfileError(f"{where}: attack_points and deepfool_points cannot exceed certify_points")
    attacks = list(section.get("attacks", []))
    if not attacks:
        raise ProfileError(f"{where}.attacks is empty; list the attacks to run (known: {', '.join(ATTACKS.names())})")
    for name in attacks:
        ATTACKS.get(name)  # RegistryError listing the known attacks
    options = {name: dict(value or {}) for name, value in dict(section.get("attack_options") or {}).items()}
    for name, value in options.items():
        if name not in attacks:
            raise ProfileError(f"{where}.attack_options names {name!r}, which is not in its attacks list {attacks}")
        ATTACKS.get(name).resolve_options(value)  # unknown option keys are a ValueError here
    verify = {**_VERIFY_DEFAULTS, **dict(common.get("verify") or {})}
    if set(verify) != set(_VERIFY_DEFAULTS) or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in verify.values()
    ):
        raise ProfileError(f"{profile.path}: evaluate.verify takes integers >= 0 for {', '.join(_VERIFY_DEFAULTS)}")
    precision = common.get("attack_precision", "fp32")
    if precision not in ATTACK_PRECISIONS:
        raise ProfileError(
            f"{profile.path}: evaluate.attack_precision must be one of {', '.join(ATTACK_PRECISIONS)}, got {precision!r}"
        )
    compile_model = common.get("attack_compile", False)
    if not isinstance(compile_model, bool):
        raise ProfileError(f"{profile.path}: evaluate.attack_compile must be true or false, got {compile_model!r}")
    return EvaluationSettings(
        epsilons=[float(eps) for eps in epsilons],
        certify_points=certify_points,
        attack_points=attack_points,
        deepfool_points=deepfool_points,
        attacks=attacks,
        attack_options=options,
        headline_eps=float(headline),
        batch_size=_positive_int(f"{profile.path}: evaluate.batch_size", common.get("batch_size", 256)),
        device=str(common.get("device", "auto")),
        workers=_positive_int(f"{profile.path}: evaluate.workers", common.get("workers", 1)),
        verify=VerifyOptions(**verify),
        attack_precision=precision,
        attack_compile=compile_model,
    )
