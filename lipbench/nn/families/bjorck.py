"""Family ``bjorck``: the existing Björck layers (Anil, Lucas & Grosse 2019, "Sorting out
Lipschitz function approximation", section 5), registered as a layer family.

Dense: :class:`lipbench.nn.LipschitzLinear` (spectral normalisation, then Björck
orthonormalisation). Conv: :class:`lipbench.nn.LipschitzConv2d` with the ``strict``
correction ``1 / sqrt(ceil(k1/s1) ceil(k2/s2))``, a true bound for zero padding at any
input size. No new layer code: both already export to ``nn.Linear`` / ``nn.Conv2d``.
"""

from __future__ import annotations

from torch import nn

from lipbench.nn.families.base import LayerFamily, register_family, unsupported
from lipbench.nn.layers import LipschitzConv2d, LipschitzLinear

__all__ = ["BJORCK", "bjorck_dense", "bjorck_conv"]


def bjorck_dense(in_features: int, out_features: int) -> nn.Module:
    """``LipschitzLinear(in_features, out_features)``: all singular values 1 (Björck)."""
    return LipschitzLinear(in_features, out_features)


def bjorck_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, input_size: tuple[int, int]) -> nn.Module:
    """``LipschitzConv2d`` with the strict correction; zero padding ``'same'`` (stride 1)
    or ``kernel_size // 2``; ``input_size`` is not needed (the bound holds at any size)."""
    if not isinstance(kernel_size, int) or kernel_size < 1:
        raise unsupported("bjorck conv", "kernel_size", kernel_size, "square kernels given as one int >= 1")
    if not isinstance(stride, int) or stride < 1:
        raise unsupported("bjorck conv", "stride", stride, "one int >= 1")
    padding = "same" if stride == 1 else kernel_size // 2
    return LipschitzConv2d(in_channels, out_channels, kernel_size, stride, padding, correction="strict")


BJORCK = register_family(
    LayerFamily(
        name="bjorck",
        paper="Anil, Lucas & Grosse 2019, Sorting out Lipschitz function approximation (ICML)",
        implementation="lipbench",
        dense=bjorck_dense,
        conv=bjorck_conv,
    )
)
