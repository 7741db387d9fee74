"""Method registry: the paper's methods (adv, lip1_log, gnp_hin, gnp_log, hkr) plus kr,
standard, ARMOR_D (armor_kl, armor_alpha; on TRADES: armor_kl_trades, armor_alpha_trades) and
every layer family with hKR and with the offset cross-entropy (``aol_hkr``, ``aol_ce``, ...), each
an architecture kit + loss + training recipe. Third-party methods register through the
``lipbench.methods`` entry-point group."""

from __future__ import annotations

import importlib

from lipbench.methods.architectures import (
    ARCHITECTURES,
    Architecture,
    build_model,
    default_architecture,
    get_architecture,
    is_architecture,
)
from lipbench.methods.base import METHODS, Method, get_method, list_methods, register_method

__all__ = [
    "METHODS",
    "Method",
    "register_method",
    "get_method",
    "list_methods",
    "ARCHITECTURES",
    "Architecture",
    "build_model",
    "default_architecture",
    "get_architecture",
    "is_architecture",
]

# Built-in methods register themselves on import; the list is explicit on purpose.
_BUILTIN_MODULES = (
    "lipbench.methods.builtin",
    "lipbench.methods.armor",
    "lipbench.methods.armor_trades",
    "lipbench.methods.families",
)
for _module in _BUILTIN_MODULES:
    importlib.import_module(_module)
