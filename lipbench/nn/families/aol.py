"""Family ``aol``: almost-orthogonal layers (Prach & Lampert 2022, "Almost-orthogonal
layers for efficient general-purpose Lipschitz networks", ECCV).

Dense (the paper's Theorem 1): for a parameter matrix ``P`` the layer uses
``W = P D``, ``D = diag(sum_j |P^T P|_ij)^(-1/2)``; ``||W||_2 <= 1`` by the Schur test.
Conv (Theorem 2): the same rescaling per *input channel* of the kernel ``K``, with
``d_i = sum_j sum_(u, v) |(K^T * K)_ij[u, v]|``, ``K^T * K`` the full autocorrelation of the
kernel (the kernel of the operator's Gram ``C^T C``, size ``2k - 1``). The zero-padded
(or circular, or strided) convolution with ``K D`` is then 1-Lipschitz: the Gram of any
of them has entries that are (sums of) entries of ``K^T * K``.

Both layers are ``nn.Linear`` / ``nn.Conv2d`` whose ``weight`` is a parametrization, so
the export is a plain layer holding the rescaled weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lipbench.nn.families.base import LayerFamily, register_family, unsupported

__all__ = [
    "AOL",
    "AOLLinear",
    "AOLConv2d",
    "AOLDenseRescale",
    "AOLConvRescale",
    "aol_dense_scale",
    "aol_conv_scale",
    "kernel_autocorrelation",
    "aol_dense",
    "aol_conv",
]


def _safe_rsqrt(d: Tensor) -> Tensor:
    """``d^(-1/2)``, finite for ``d = 0`` (a zero column: its scale does not matter)."""
    return torch.rsqrt(d.clamp_min(torch.finfo(d.dtype).tiny))


def aol_dense_scale(weight: Tensor) -> Tensor:
    """Theorem 1: ``(sum_j |P^T P|_ij)^(-1/2)`` per input feature (column of ``weight``)."""
    gram = weight.mT @ weight
    return _safe_rsqrt(gram.abs().sum(dim=1))


def kernel_autocorrelation(kernel: Tensor) -> Tensor:
    """``K^T * K``: ``(in, in, 2k1 - 1, 2k2 - 1)``, ``[a, b, u, v] = sum_o sum_p K[o, a, p + (u, v) - (k - 1)] K[o, b, p]``."""
    k1, k2 = kernel.shape[-2:]
    channels_first = kernel.transpose(0, 1)  # (in, out, k1, k2): one "image" per input channel
    return F.conv2d(channels_first, channels_first, padding=(k1 - 1, k2 - 1))


def aol_conv_scale(kernel: Tensor) -> Tensor:
    """Theorem 2: ``(sum_j sum_(u,v) |(K^T * K)_ij[u, v]|)^(-1/2)`` per input channel."""
    return _safe_rsqrt(kernel_autocorrelation(kernel).abs().sum(dim=(1, 2, 3)))


class AOLDenseRescale(nn.Module):
    """Parametrization ``P -> P diag(aol_dense_scale(P))`` (Theorem 1)."""

    def forward(self, weight: Tensor) -> Tensor:
        return weight * aol_dense_scale(weight)


class AOLConvRescale(nn.Module):
    """Parametrization ``K -> K diag(aol_conv_scale(K))`` on the input channels (Theorem 2)."""

    def forward(self, kernel: Tensor) -> Tensor:
        return kernel * aol_conv_scale(kernel).view(1, -1, 1, 1)


def _effective(module: nn.Module) -> Tensor:
    with torch.no_grad():
        return module.weight.detach().clone()


class AOLLinear(nn.Linear):
    """Dense AOL layer: ``y = P D x + b`` (Theorem 1); orthogonal initialisation makes ``D = I``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        with torch.no_grad():
            nn.init.orthogonal_(self.weight)
            if self.bias is not None:
                self.bias.zero_()
        parametrize.register_parametrization(self, "weight", AOLDenseRescale())

    def export_plain(self) -> nn.Linear:
        """An ``nn.Linear`` (eval mode) holding the rescaled weight, computed now."""
        weight = _effective(self)
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, dtype=weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(weight)
            if self.bias is not None:
                plain.bias.copy_(self.bias.detach())
        return plain.to(weight.device).eval()

    def unconstrained_twin(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)


class AOLConv2d(nn.Conv2d):
    """Conv AOL layer (Theorem 2), zero padding (``'same'`` or an int), any stride.

    Initialisation: the centre tap holds an orthogonal ``(out, in)`` matrix and the other
    taps are zero, so the initial layer is an orthogonal 1x1 map and ``D = I``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = "same",
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        with torch.no_grad():
            self.weight.zero_()
            k1, k2 = self.kernel_size
            nn.init.orthogonal_(self.weight[:, :, k1 // 2, k2 // 2])
            if self.bias is not None:
                self.bias.zero_()
        parametrize.register_parametrization(self, "weight", AOLConvRescale())

    def _options(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, bias=self.bias is not None, padding_mode=self.padding_mode)

    def export_plain(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` (eval mode, same padding) holding the rescaled kernel, computed now."""
        weight = _effective(self)
        plain = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, **self._options(), dtype=weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(weight)
            if self.bias is not None:
                plain.bias.copy_(self.bias.detach())
        return plain.to(weight.device).eval()

    def unconstrained_twin(self) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, **self._options())


def aol_dense(in_features: int, out_features: int) -> nn.Module:
    """``AOLLinear(in_features, out_features)``."""
    return AOLLinear(in_features, out_features)


def aol_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, input_size: tuple[int, int]) -> nn.Module:
    """``AOLConv2d`` with zero padding ``'same'`` (stride 1) or ``kernel_size // 2``; the
    bound holds at every input size, so ``input_size`` is not used."""
    if not isinstance(kernel_size, int) or kernel_size < 1:
        raise unsupported("aol conv", "kernel_size", kernel_size, "square kernels given as one int >= 1")
    if not isinstance(stride, int) or stride < 1:
        raise unsupported("aol conv", "stride", stride, "one int >= 1")
    padding = "same" if stride == 1 else kernel_size // 2
    return AOLConv2d(in_channels, out_channels, kernel_size, stride, padding)


AOL = register_family(
    LayerFamily(
        name="aol",
        paper="Prach & Lampert 2022, Almost-orthogonal layers for efficient general-purpose Lipschitz networks (ECCV)",
        implementation="lipbench",
        dense=aol_dense,
        conv=aol_conv,
    )
)
