"""Lipschitz layers, activations and pooling, each with an unconstrained twin.

Constrained weights use ``torch.nn.utils.parametrize`` (see
:mod:`lipbench.nn.parametrizations`). Every constrained module knows its plain export
(:meth:`export_plain`) and its unconstrained twin (:meth:`unconstrained_twin`), so an
architecture exists constrained, exported and unconstrained.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lipbench.nn import functional as LF
from lipbench.nn.conv_bounds import conv2d_geometry, conv2d_norm_plan
from lipbench.nn.parametrizations import ConvOperatorNormalized, RowNormalized, SpectralBjorck

__all__ = [
    "LipschitzLinear",
    "LipschitzConv2d",
    "RowNormalizedLinear",
    "GroupSort",
    "GroupSort2",
    "FullSort",
    "L2NormPool2d",
    "GlobalL2NormPool2d",
    "ConvCorrection",
]

ConvCorrection = Literal["strict", "lambda", "exact"]


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Evaluate ``module`` as in eval mode (no power-iteration update), then restore its flags."""
    modes = [(child, child.training) for child in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for child, training in modes:
            child.training = training


def _effective_weight(layer: nn.Module) -> Tensor:
    """The current constrained weight, exactly as an eval-mode forward computes it."""
    with _eval_mode(layer), torch.no_grad():
        return layer.weight.detach().clone()


def _plain_linear(layer: nn.Linear) -> nn.Linear:
    weight = _effective_weight(layer)
    plain = nn.Linear(
        layer.in_features, layer.out_features, bias=layer.bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        plain.weight.copy_(weight)
        if layer.bias is not None:
            plain.bias.copy_(layer.bias.detach())
    return plain


class LipschitzLinear(nn.Linear):
    """Dense layer with spectral normalisation then Björck orthonormalisation (section 5).

    The effective weight has all singular values 1 (up to Björck's convergence), so the
    layer is 1-Lipschitz and, when ``out_features <= in_features``, gradient norm
    preserving.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        bjorck_iterations: int = 15,
        bjorck_beta: float = 0.5,
        power_iterations: int = 1,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        with torch.no_grad():
            nn.init.orthogonal_(self.weight)
            if self.bias is not None:
                self.bias.zero_()
        parametrize.register_parametrization(
            self, "weight", SpectralBjorck(self.weight, bjorck_iterations, bjorck_beta, power_iterations)
        )

    def export_plain(self) -> nn.Linear:
        """An ``nn.Linear`` with the current effective weight (computed now, never cached)."""
        return _plain_linear(self)

    def unconstrained_twin(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)


class RowNormalizedLinear(nn.Linear):
    """Output layer normalised per row: each logit is separately 1-Lipschitz.

    The whole logit map may reach ``sqrt(out_features)``; certificates use the per-logit
    bound (``(top1 - top2) / 2``), the paper's multiclass setting.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        with torch.no_grad():
            nn.init.orthogonal_(self.weight)
            if self.bias is not None:
                self.bias.zero_()
        parametrize.register_parametrization(self, "weight", RowNormalized())

    def export_plain(self) -> nn.Linear:
        return _plain_linear(self)

    def unconstrained_twin(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)


def _correction_factor(
    name: str,
    correction: str,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: str | int | tuple[int, int],
    input_size: tuple[int, int] | None,
) -> float | None:
    """The constant factor of ``correction`` (``None`` for ``exact``, computed per forward)."""
    if correction == "strict":
        return LF.strict_conv_factor(kernel, stride)
    if correction == "lambda":
        if input_size is None or padding != "same" or stride != (1, 1):
            raise ValueError(
                f"{name}: correction='lambda' (paper eq. 11) needs input_size=(h, w), stride 1 and "
                f"padding='same'; got input_size={input_size}, stride={stride}, padding={padding!r}"
            )
        return LF.lambda_conv_factor(kernel, input_size)
    if correction == "exact":
        if input_size is None:
            raise ValueError(f"{name}: correction='exact' needs input_size=(h, w), the size the layer's norm is taken at")
        return None
    raise ValueError(f"{name}: correction must be 'strict', 'lambda' or 'exact', got {correction!r}")


class LipschitzConv2d(nn.Conv2d):
    """Conv2d whose reshaped kernel ``(out, in*k1*k2)`` is spectrally normalised, then
    Björck-orthonormalised, then corrected for the convolution.

    ``correction="strict"`` (default) multiplies by ``1/sqrt(ceil(k1/s1) ceil(k2/s2))``,
    a true bound for any input size and zero padding. ``correction="lambda"`` uses the
    paper's Λ (eq. 11) for ``input_size``; it is an average, not a bound (a constant 3x3
    kernel on 28x28 reaches about 1.016), so it is an option we report on.
    ``correction="exact"`` divides the kernel by the operator norm of its convolution on
    ``input_size`` (:class:`~lipbench.nn.parametrizations.ConvOperatorNormalized`, at every
    forward, autograd through it), the very function the certificate uses: the exported
    layer's bound is 1 (exact norm 1 with circular padding; with zero padding the grid
    bound is 1 and the true norm slightly below). ``correction_factor`` is ``None`` then.

    Supported: zero padding (``"same"`` for stride 1, ``"valid"`` or integers) or
    ``padding_mode="circular"``, any stride, dilation 1, groups 1. Export gives a plain
    ``nn.Conv2d`` with the same options.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = "same",
        bias: bool = True,
        *,
        correction: ConvCorrection = "strict",
        input_size: tuple[int, int] | None = None,
        padding_mode: Literal["zeros", "circular"] = "zeros",
        bjorck_iterations: int = 15,
        bjorck_beta: float = 0.5,
        power_iterations: int = 1,
    ) -> None:
        name = f"LipschitzConv2d({in_channels}, {out_channels}, kernel_size={kernel_size}, stride={stride})"
        stride_pair = (stride, stride) if isinstance(stride, int) else tuple(stride)
        kernel_pair = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if min(stride_pair) < 1 or min(kernel_pair) < 1:
            raise ValueError(f"{name}: kernel_size and stride must be >= 1")
        if padding == "same" and stride_pair != (1, 1):
            raise ValueError(f"{name}: padding='same' needs stride 1; pass an integer padding for strided convolutions")
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(f"{name}: padding_mode must be 'zeros' or 'circular', got {padding_mode!r}")
        factor = _correction_factor(name, correction, kernel_pair, stride_pair, padding, input_size)
        super().__init__(in_channels, out_channels, kernel_pair, stride_pair, padding, bias=bias, padding_mode=padding_mode)
        self.correction = correction
        self.correction_factor = factor
        self.input_size = input_size
        with torch.no_grad():
            nn.init.orthogonal_(self.weight)
            if self.bias is not None:
                self.bias.zero_()
        spectral = SpectralBjorck(self.weight, bjorck_iterations, bjorck_beta, power_iterations, factor or 1.0)
        parametrize.register_parametrization(self, "weight", spectral)
        if correction == "exact":
            plan = conv2d_norm_plan(conv2d_geometry(self, input_size, name))
            parametrize.register_parametrization(self, "weight", ConvOperatorNormalized(plan))

    def _options(self) -> dict[str, Any]:
        return dict(stride=self.stride, padding=self.padding, bias=self.bias is not None, padding_mode=self.padding_mode)

    def export_plain(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the current effective kernel (computed now, never cached)."""
        weight = _effective_weight(self)
        plain = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, **self._options(), device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            plain.weight.copy_(weight)
            if self.bias is not None:
                plain.bias.copy_(self.bias.detach())
        return plain

    def unconstrained_twin(self) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, **self._options())


class GroupSort(nn.Module):
    """Sort contiguous groups of ``group_size`` features along ``dim`` (1 = channels)."""

    def __init__(self, group_size: int, dim: int = 1) -> None:
        super().__init__()
        if group_size < 2:
            raise ValueError(f"GroupSort: group_size must be >= 2, got {group_size}")
        self.group_size = group_size
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return LF.group_sort(x, self.group_size, self.dim)

    def unconstrained_twin(self) -> nn.Module:
        return nn.ReLU()

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, dim={self.dim}"


class GroupSort2(nn.Module):
    """GroupSort with groups of 2 (MaxMin); the paper's activation in convolutions."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return LF.group_sort_2(x, self.dim)

    def unconstrained_twin(self) -> nn.Module:
        return nn.ReLU()


class FullSort(nn.Module):
    """Sort all features along ``dim``; the paper's activation in dense layers."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return LF.full_sort(x, self.dim)

    def unconstrained_twin(self) -> nn.Module:
        return nn.ReLU()


class L2NormPool2d(nn.Module):
    """L2-norm pooling over non-overlapping ``kernel_size`` windows (P=2, norm preserving)."""

    def __init__(self, kernel_size: int | tuple[int, int] = 2) -> None:
        super().__init__()
        self.kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if min(self.kernel_size) < 1:
            raise ValueError(f"L2NormPool2d: kernel_size must be >= 1, got {kernel_size}")

    def forward(self, x: Tensor) -> Tensor:
        return LF.l2_norm_pool2d(x, self.kernel_size)

    def unconstrained_twin(self, pooling: Literal["max", "avg"] = "max") -> nn.Module:
        return nn.MaxPool2d(self.kernel_size) if pooling == "max" else nn.AvgPool2d(self.kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class GlobalL2NormPool2d(nn.Module):
    """Per-channel L2 norm over all positions, ``(N, C, H, W) -> (N, C)``; 1-Lipschitz."""

    def forward(self, x: Tensor) -> Tensor:
        return LF.global_l2_norm_pool2d(x)

    def unconstrained_twin(self, pooling: Literal["max", "avg"] = "max") -> nn.Module:
        pool = nn.AdaptiveMaxPool2d(1) if pooling == "max" else nn.AdaptiveAvgPool2d(1)
        return nn.Sequential(pool, nn.Flatten())
