"""The layer-family axis: one registry entry per family of 1-Lipschitz layers.

A :class:`LayerFamily` turns the abstract blocks of an architecture (dense, conv) into
modules. Every module a family builds is 1-Lipschitz in L2 by construction, knows its
plain-torch export (``export_plain()``) and its unconstrained twin
(``unconstrained_twin()``), and either exports to ``nn.Linear`` / ``nn.Conv2d`` (bounded
exactly by :func:`lipbench.nn.lipschitz_upper_bound`) or to a
:class:`lipbench.nn.CertifiedBlock` that certifies itself from its exported weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from lipbench.registry import Registry

__all__ = ["LayerFamily", "LAYER_FAMILIES", "register_family", "get_family", "list_families", "unsupported"]

DenseBuilder = Callable[[int, int], nn.Module]
"""``dense(in_features, out_features)`` -> a 1-Lipschitz module."""

ConvBuilder = Callable[[int, int, int, int, tuple[int, int]], nn.Module]
"""``conv(in_channels, out_channels, kernel_size, stride, input_size)`` -> a 1-Lipschitz module
(``padding='same'`` for stride 1, ``kernel_size // 2`` otherwise, as the Björck convs)."""


@dataclass(frozen=True)
class LayerFamily:
    """A family of 1-Lipschitz layers (AOL, SLL, ...) as architectures use it.

    ``residual``: the dense / conv builders return residual blocks, which need
    ``in == out`` (and stride 1); an architecture inserts a plain family layer to change
    the width. ``paper``: the reference the layer comes from. ``implementation``: whose
    code computes the weights (``lipbench`` or ``orthogonium <version>``). ``link``: the paper's URL.
    """

    name: str
    paper: str
    implementation: str
    dense: DenseBuilder
    conv: ConvBuilder | None
    residual: bool = False
    link: str = ""


LAYER_FAMILIES: Registry[LayerFamily] = Registry("layer family", entry_point_group="lipbench.layer_families")


def register_family(family: LayerFamily) -> LayerFamily:
    """Register ``family`` under ``family.name`` (a duplicate name is an error)."""
    LAYER_FAMILIES.add(family.name, family)
    return family


def get_family(name: str) -> LayerFamily:
    """The registered family ``name``; an unknown name lists the known ones."""
    return LAYER_FAMILIES.get(name)


def list_families() -> list[str]:
    return LAYER_FAMILIES.names()


def unsupported(layer: str, option: str, value: object, supported: str) -> ValueError:
    """The one error for an option a layer does not support, raised before any training."""
    return ValueError(f"{layer}: {option}={value!r} is not supported; {layer} supports {supported}")
