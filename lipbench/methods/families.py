"""Every registered layer family as two methods, so the leaderboard compares like with like.

=============  ==========================================================  ==========================
name           network                                                     loss
=============  ==========================================================  ==========================
<family>_hkr   the family's layers, GroupSort2, L2-norm pooling,           hKR (CVPR 2021, eq. 5/12)
               per-row normalised output (:mod:`...architectures`)
<family>_ce    the same network                                            offset cross-entropy (Prach
                                                                           & Lampert 2022), the loss
                                                                           Prach et al. 2024 used for
                                                                           every family
=============  ==========================================================  ==========================

A family registered in :mod:`lipbench.nn.families` gets both methods by being registered.
"""

from __future__ import annotations

from lipbench.methods.base import Method, register_method
from lipbench.nn.families import LayerFamily, get_family, list_families

__all__ = ["family_methods"]

#: Prach et al. (CVPR 2024) train every family with LipCrossEntropyLoss(margin ~0.4, temperature
#: 0.25), i.e. cross-entropy on (f - 0.4 onehot) / 0.25: our temperature multiplies, hence 4.
_OFFSET_CE_DEFAULTS = {"temperature": 4.0, "offset": 0.4}


def _reference(family: LayerFamily) -> dict[str, str]:
    return {"link": family.link, "authors": family.paper, "venue": f"layers: {family.implementation}"}


def _register(family: LayerFamily) -> list[str]:
    """Register ``<family>_hkr`` and ``<family>_ce``; returns their names."""
    layer = f"{family.name} layers ({family.paper}; {family.implementation})"
    variants = (
        ("hkr", "hkr", {"alpha": 50.0, "margin": 1.0}, f"{layer} with the hKR loss (eq. 5 / eq. 12)."),
        ("ce", "cross_entropy", dict(_OFFSET_CE_DEFAULTS), f"{layer} with the offset cross-entropy."),
    )
    names = []
    for suffix, loss, defaults, description in variants:
        attributes = {
            "paper_name": f"{family.name.upper()}_{suffix}",
            "description": description,
            "kit": family.name,
            "loss": loss,
            "defaults": defaults,
            "reference": _reference(family),
            "__module__": __name__,
            "__doc__": description,
        }
        cls = type(f"{family.name.title().replace('_', '')}{suffix.title()}", (Method,), attributes)
        register_method(f"{family.name}_{suffix}")(cls)
        names.append(f"{family.name}_{suffix}")
    return names


def family_methods() -> list[str]:
    """The methods this module registered, two per layer family."""
    return list(_REGISTERED)


_REGISTERED: tuple[str, ...] = tuple(name for family in list_families() for name in _register(get_family(family)))
