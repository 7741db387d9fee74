"""Adversarial attacks for the empirical-robustness protocol of Serrurier et al. (2021).

``ATTACKS`` is the attack registry (``fgm``, ``pgd_l2``, ``cw_l2``, ``deepfool_l2``,
``autoattack_l2``); :func:`run_attack_suite` runs several of them with certificate
pruning and combines them pointwise (a point is broken at eps if any attack succeeds).
"""

from lipbench.evaluate.attacks.base import (
    ATTACK_PRECISIONS,
    ATTACKS,
    REL_TOL,
    AttackResult,
    AttackSpec,
    AutocastLogits,
    BinaryAsTwoLogits,
    register_attack,
)

# Built-in attacks register themselves on import: the explicit list of modules.
from lipbench.evaluate.attacks import foolbox_attacks, carlini_wagner, autoattack_adapter  # noqa: F401  isort: skip
from lipbench.evaluate.attacks.autoattack_adapter import load_autoattack
from lipbench.evaluate.attacks.protocol import (
    DEFAULT_ATTACKS,
    SuiteResult,
    run_attack_suite,
)

__all__ = [
    "ATTACK_PRECISIONS",
    "ATTACKS",
    "DEFAULT_ATTACKS",
    "REL_TOL",
    "AttackResult",
    "AttackSpec",
    "AutocastLogits",
    "BinaryAsTwoLogits",
    "SuiteResult",
    "load_autoattack",
    "register_attack",
    "run_attack_suite",
]
