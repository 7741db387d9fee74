"""Layer families (AOL, SLL, CPL, Cayley, SOC, BCOP, AOC, Björck) behind one registry.

Each family module registers itself on import; the list below is explicit on purpose.
"""

from __future__ import annotations

import importlib

from lipbench.nn.families.base import LAYER_FAMILIES, LayerFamily, get_family, list_families, register_family

__all__ = ["LAYER_FAMILIES", "LayerFamily", "get_family", "list_families", "register_family"]

_BUILTIN_MODULES: tuple[str, ...] = (
    "lipbench.nn.families.bjorck",
    "lipbench.nn.families.aol",
    "lipbench.nn.families.orthogonal",
    "lipbench.nn.families.residual",
)
for _module in _BUILTIN_MODULES:
    importlib.import_module(_module)
