"""Families of orthogonal layers: ``aoc`` and ``bcop`` wrap ``orthogonium`` 0.0.4;
``cayley`` and ``soc`` are our own (:mod:`lipbench.nn.families.circular`).

- ``aoc``: Boissin et al. 2025, "An adaptive orthogonal convolution scheme for efficient
  and flexible CNN architectures": ``orthogonium``'s ``AdaptiveOrthoConv2d`` (BCOP for
  stride 1, BCOP x RKO for ``kernel > stride``) and ``OrthoLinear`` (Björck).
- ``bcop``: Li et al. 2019, "Preventing gradient attenuation in Lipschitz constrained
  convolutional networks": ``orthogonium``'s ``FastBlockConv2d`` (stride 1), ``OrthoLinear``.

Both orthogonium convs are ``nn.Conv2d`` with an explicit kernel and circular padding, so
the export is one circular ``nn.Conv2d`` (exact norm, :mod:`lipbench.nn.conv_bounds`).
Measured (circular, 8x8 inputs, 1-16 channels, kernels 3-5, strides 1-2): exported
norms 1.000000-1.000001 for every supported shape. Refused at build time, as the export
would not be orthogonal: ``kernel_size <= stride`` (orthogonium refuses ``<``; ``==`` with the
builders' ``kernel_size // 2`` padding repeats outputs: bound 2.0 for 2x2 stride 2 on 8x8),
strided even kernels (same: bound 2.0 for 4x4 stride 2), strided inputs not divisible by
the stride (bound 1.74 for 3x3 stride 2 on 7x7), inputs narrower than ``kernel_size // 2``
(PyTorch's circular padding wraps once at most).

orthogonium's own SOC (``AdaptiveSOCConv2d``) is not used: its ``padding='same'`` is
computed for the small kernel while the exponential's kernel is ``(k - 1) exp_niter + 1``
wide, so an 8x8 input gives a 4x4 output (2x2 when strided), and the exported norm of
that kernel is 1.0062-1.0221 at stride 1 (probably because its AOL rescaling after the
skew step breaks skew symmetry). Its Cayley conv (``legacy``) fixes a 32x32 grid and
needs ``einops`` (not a dependency); its ``CayleyLinear`` calls ``.cuda()``.
"""

from __future__ import annotations

import copy
import warnings

import torch
from orthogonium.layers.conv.AOC import AdaptiveOrthoConv2d, FastBlockConv2d
from orthogonium.layers.linear import OrthoLinear
from torch import Tensor, nn

from lipbench.nn.families.base import LayerFamily, register_family, unsupported
from lipbench.nn.families.circular import CayleyConv2d, CayleyLinear, ExpSkewLinear, SOCConv2d

__all__ = [
    "AOC",
    "BCOP",
    "CAYLEY",
    "SOC",
    "OrthogoniumConv2d",
    "OrthogoniumLinear",
    "ORTHOGONIUM_VERSION",
    "aoc_conv",
    "bcop_conv",
    "cayley_conv",
    "soc_conv",
]

ORTHOGONIUM_VERSION = "0.0.4"


def _effective_weight(layer: nn.Module) -> Tensor:
    """The orthogonium layer's current weight, computed on a copy (its power iteration
    updates state at every evaluation; the model itself is left untouched)."""
    with torch.no_grad():
        return copy.deepcopy(layer).weight.detach().clone()


class OrthogoniumLinear(nn.Module):
    """``orthogonium.layers.linear.OrthoLinear`` (power iteration, then Björck) with export."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.layer = OrthoLinear(in_features, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def export_plain(self) -> nn.Linear:
        weight, layer = _effective_weight(self.layer), self.layer
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        plain = plain.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(weight)
            if layer.bias is not None:
                plain.bias.copy_(layer.bias.detach())
        return plain.eval()

    def unconstrained_twin(self) -> nn.Linear:
        return nn.Linear(self.layer.in_features, self.layer.out_features, bias=self.layer.bias is not None)


class OrthogoniumConv2d(nn.Module):
    """An orthogonium conv (an ``nn.Conv2d`` with a parametrized kernel) with export/twin."""

    def __init__(self, layer: nn.Conv2d) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def _options(self) -> dict:
        layer = self.layer
        return dict(
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )

    def export_plain(self) -> nn.Conv2d:
        """One ``nn.Conv2d`` (same stride, padding, padding mode) holding the current kernel."""
        weight, layer = _effective_weight(self.layer), self.layer
        plain = nn.Conv2d(layer.in_channels, layer.out_channels, tuple(weight.shape[-2:]), **self._options())
        plain = plain.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(weight)
            if layer.bias is not None:
                plain.bias.copy_(layer.bias.detach())
        return plain.eval()

    def unconstrained_twin(self) -> nn.Conv2d:
        layer = self.layer
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, **self._options())


def _check_square(layer: str, kernel_size: object, stride: object, input_size: tuple[int, int]) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1:
        raise unsupported(layer, "kernel_size", kernel_size, "square kernels given as one int >= 1")
    if not isinstance(stride, int) or stride < 1:
        raise unsupported(layer, "stride", stride, "one int >= 1")
    if min(input_size) < kernel_size // 2:  # circular padding wraps at most once (PyTorch)
        raise unsupported(layer, "input_size", tuple(input_size), f"inputs at least kernel_size // 2 = {kernel_size // 2} wide")


def aoc_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, input_size: tuple[int, int]) -> nn.Module:
    """``AdaptiveOrthoConv2d``, circular padding ``'same'`` (stride 1) or ``kernel_size // 2``."""
    _check_square("aoc conv", kernel_size, stride, input_size)
    if stride > 1 and (kernel_size <= stride or kernel_size % 2 == 0):
        raise unsupported(
            "aoc conv", "stride", stride, f"stride 1, or stride < kernel_size with an odd kernel (got kernel_size={kernel_size})"
        )
    if stride > 1 and any(size % stride for size in input_size):
        raise unsupported("aoc conv", "input_size", tuple(input_size), f"sizes divisible by the stride {stride} when strided")
    padding = "same" if stride == 1 else kernel_size // 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = AdaptiveOrthoConv2d(in_channels, out_channels, kernel_size, stride, padding, padding_mode="circular")
    return OrthogoniumConv2d(layer)


def bcop_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, input_size: tuple[int, int]) -> nn.Module:
    """``FastBlockConv2d`` (BCOP), stride 1, circular ``'same'`` padding."""
    _check_square("bcop conv", kernel_size, stride, input_size)
    if stride != 1:
        raise unsupported("bcop conv", "stride", stride, "stride 1 only (use the aoc family for strided orthogonal convs)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = FastBlockConv2d(in_channels, out_channels, kernel_size, 1, "same", padding_mode="circular")
    return OrthogoniumConv2d(layer)


def _check_downsampling(layer: str, kernel_size: int, stride: int, input_size: tuple[int, int], padded: bool) -> None:
    """Stride ``s``: invertible downsampling, so ``s`` must divide the input; ``padded``: the
    layer pads the ``n / s`` grid circularly by ``kernel_size // 2``, at most once around."""
    if any(size % stride for size in input_size):
        raise unsupported(layer, "input_size", tuple(input_size), f"sizes divisible by stride={stride}")
    grid = min(input_size) // stride
    if padded and grid < kernel_size // 2:
        raise unsupported(layer, "kernel_size", kernel_size, f"kernel_size // 2 <= {grid} (the downsampled grid)")


def cayley_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, input_size: tuple[int, int]) -> nn.Module:
    """Our :class:`CayleyConv2d` on ``input_size`` (circular); stride by invertible downsampling."""
    _check_square("cayley conv", kernel_size, stride, input_size)
    _check_downsampling("cayley conv", kernel_size, stride, input_size, padded=False)
    return CayleyConv2d(in_channels, out_channels, kernel_size, input_size, stride)


def soc_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, input_size: tuple[int, int]) -> nn.Module:
    """Our :class:`SOCConv2d` on ``input_size`` (circular), odd kernel; stride by invertible downsampling."""
    _check_square("soc conv", kernel_size, stride, input_size)
    if kernel_size % 2 == 0:
        raise unsupported("soc conv", "kernel_size", kernel_size, "odd kernels (the skew kernel is centred)")
    _check_downsampling("soc conv", kernel_size, stride, input_size, padded=True)
    return SOCConv2d(in_channels, out_channels, kernel_size, input_size, stride)


AOC = register_family(
    LayerFamily(
        name="aoc",
        paper="Boissin et al. 2025, An adaptive orthogonal convolution scheme for efficient and flexible CNN architectures",
        implementation=f"orthogonium {ORTHOGONIUM_VERSION}",
        dense=OrthogoniumLinear,
        conv=aoc_conv,
    )
)
BCOP = register_family(
    LayerFamily(
        name="bcop",
        paper="Li et al. 2019, Preventing gradient attenuation in Lipschitz constrained convolutional networks (NeurIPS)",
        implementation=f"orthogonium {ORTHOGONIUM_VERSION}",
        dense=OrthogoniumLinear,
        conv=bcop_conv,
    )
)
CAYLEY = register_family(
    LayerFamily(
        name="cayley",
        paper="Trockman & Kolter 2021, Orthogonalizing convolutional layers with the Cayley transform (ICLR)",
        implementation="lipbench",
        dense=CayleyLinear,
        conv=cayley_conv,
    )
)
SOC = register_family(
    LayerFamily(
        name="soc",
        paper="Singla & Feizi 2021, Skew orthogonal convolutions (ICML)",
        implementation="lipbench",
        dense=ExpSkewLinear,
        conv=soc_conv,
    )
)
