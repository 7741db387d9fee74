"""Residual layer families: SLL (Araujo et al., ICLR 2023) and CPL (Meunier et al., ICML 2022).

Every layer computes ``h(x) = x - W diag(s) relu(W^T x + b)`` (:func:`lipbench.nn.residual_blocks.
residual_forward`), ``s = 2 T^{-1}``; the families differ in ``T`` only (formulas and Theorem 3 in
:mod:`lipbench.nn.residual_blocks`):

* SLL: ``t_i = sum_j |W^T W|_ij q_j / q_i``, ``q = exp(log_q)`` learnable (Araujo et al. 2023, Theorem 3);
* CPL: ``T = ||W||^2 I`` (Meunier et al. 2022). Training estimates ``||W||`` by power iteration
  (one step per training forward on a persistent vector, as the paper); eval mode and the export
  use the exact norm (SVD for dense, :mod:`lipbench.nn.conv_bounds` for conv at ``input_size``).

``export_plain()`` gives a :class:`~lipbench.nn.residual_blocks.ResidualBlock` holding the effective
tensors, equal to the eval-mode layer, that checks its own certificate. Residual blocks keep the width
and the resolution: the family builders refuse ``in != out`` and ``stride != 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.nn.conv_bounds import conv2d_geometry, conv2d_norm_plan, conv2d_operator_norm
from lipbench.nn.families.base import LayerFamily, register_family, unsupported
from lipbench.nn.residual_blocks import (
    ResidualBlock,
    UnconstrainedResidual,
    cpl_scale,
    residual_forward,
    sll_conv_scale,
    sll_dense_scale,
)

__all__ = ["SLLLinear", "SLLConv2d", "CPLLinear", "CPLConv2d", "SLL_FAMILY", "CPL_FAMILY"]

SLL_PAPER = 'Araujo et al., "A unified algebraic perspective on Lipschitz neural networks", ICLR 2023'
CPL_PAPER = 'Meunier et al., "A dynamical system perspective for Lipschitz neural networks", ICML 2022'


class _ResidualLayer(nn.Module):
    """Shared part: the parameters ``weight`` and ``bias``, the forward pass, export and twin.

    Dense layers store ``W`` itself, ``(features, inner)``; conv layers the kernel of ``W^T``,
    ``(inner, channels, k, k)`` (``W`` is then the transposed convolution), as the papers' code.
    Subclasses give ``scale(exact)``: ``s = 2 T^{-1}`` (float64), exact as in eval mode when ``exact``.
    """

    kind = ""

    def __init__(self, weight_shape: tuple[int, ...], inner: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(weight_shape))
        self.bias = nn.Parameter(torch.empty(inner))
        nn.init.xavier_normal_(self.weight)  # as the papers' code
        fan_in = self.weight.numel() // inner if self.weight.ndim == 4 else self.weight.shape[0]
        nn.init.uniform_(self.bias, -(fan_in**-0.5), fan_in**-0.5)

    def transform_weight(self) -> Tensor:
        """``W^T`` as a Linear weight ``(inner, features)`` or a conv kernel."""
        return self.weight.mT if self.weight.ndim == 2 else self.weight

    def scale(self, exact: bool) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale(exact=not self.training).to(self.weight.dtype)
        return residual_forward(x, self.transform_weight(), self.bias, scale)

    def _plain_transform(self) -> nn.Linear | nn.Conv2d:
        if self.weight.ndim == 2:
            features, inner = self.weight.shape
            return nn.Linear(features, inner, device=self.weight.device, dtype=self.weight.dtype)
        inner, channels, k1, k2 = self.weight.shape
        return nn.Conv2d(channels, inner, (k1, k2), padding="same", device=self.weight.device, dtype=self.weight.dtype)

    @torch.no_grad()
    def export_plain(self) -> ResidualBlock:
        """A frozen :class:`ResidualBlock` with the current ``W^T``, ``b`` and eval-mode scale (computed now)."""
        transform = self._plain_transform()
        transform.weight.copy_(self.transform_weight())
        transform.bias.copy_(self.bias)
        block = ResidualBlock(transform, self.scale(exact=True).to(self.weight.dtype), self.kind)
        block.requires_grad_(False)
        return block.eval()

    def unconstrained_twin(self) -> UnconstrainedResidual:
        """``x + U relu(V x + b)`` with plain, freshly initialised ``V`` (with bias) and ``U`` (without)."""
        transform, like = self._plain_transform(), {"device": self.weight.device, "dtype": self.weight.dtype}
        if isinstance(transform, nn.Linear):
            project = nn.Linear(transform.out_features, transform.in_features, bias=False, **like)
        else:
            channels = (transform.out_channels, transform.in_channels)
            project = nn.Conv2d(*channels, transform.kernel_size, padding="same", bias=False, **like)
        return UnconstrainedResidual(transform, project)


def _check_kernel(layer: str, kernel_size: int) -> None:
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
        raise unsupported(layer, "kernel_size", kernel_size, "odd kernel sizes (the transposed 'same' convolution is W)")


class SLLLinear(_ResidualLayer):
    """Dense SLL layer (Araujo et al. 2023, Theorem 3): ``x - 2 W T^{-1} relu(W^T x + b)``,
    ``W`` ``(features, inner)``, ``t_i = sum_j |W^T W|_ij q_j / q_i``; ``inner`` defaults to ``features``."""

    kind = "SLL"

    def __init__(self, features: int, inner: int | None = None) -> None:
        inner = features if inner is None else inner
        super().__init__((features, inner), inner)
        self.log_q = nn.Parameter(torch.zeros(inner))  # q = exp(log_q) > 0, starts at 1

    def scale(self, exact: bool) -> Tensor:
        return sll_dense_scale(self.weight, self.log_q)


class SLLConv2d(_ResidualLayer):
    """Conv SLL layer (Araujo et al. 2023, Theorem 3, section 4): ``W^T`` a stride-1 ``'same'``
    zero-padded convolution ``channels -> inner`` (odd ``kernel_size``), ``W`` its transpose, ``T`` from
    the kernel's absolute autocorrelation weighted by ``q_j / q_i``."""

    kind = "SLL"

    def __init__(self, channels: int, kernel_size: int = 3, inner: int | None = None) -> None:
        _check_kernel(f"SLLConv2d({channels})", kernel_size)
        inner = channels if inner is None else inner
        super().__init__((inner, channels, kernel_size, kernel_size), inner)
        self.log_q = nn.Parameter(torch.zeros(inner))

    def scale(self, exact: bool) -> Tensor:
        return sll_conv_scale(self.weight, self.log_q)


class _CPLLayer(_ResidualLayer):
    """CPL: ``s = 2 / ||W||^2``; ``||W||`` by power iteration on the persistent ``u`` (training) or exact."""

    kind = "CPL"

    def __init__(self, weight_shape: tuple[int, ...], inner: int, vector_shape: tuple[int, ...], power_iterations: int) -> None:
        super().__init__(weight_shape, inner)
        if power_iterations < 1:
            raise ValueError(f"{type(self).__name__}: power_iterations must be >= 1, got {power_iterations}")
        self.power_iterations = power_iterations
        self.register_buffer("u", F.normalize(torch.randn(vector_shape).flatten(), dim=0).reshape(vector_shape))
        with torch.no_grad():
            self._power_step(50)  # start from a converged vector

    def _conv(self, u: Tensor) -> Tensor:
        k1, k2 = self.weight.shape[-2:]
        return F.conv2d(u, self.weight, padding=(k1 // 2, k2 // 2))

    def _adjoint(self, v: Tensor) -> Tensor:
        if self.weight.ndim == 2:
            return F.linear(v, self.weight)
        k1, k2 = self.weight.shape[-2:]
        return F.conv_transpose2d(v, self.weight, padding=(k1 // 2, k2 // 2))

    def _apply_transform(self, u: Tensor) -> Tensor:
        return F.linear(u, self.weight.mT) if self.weight.ndim == 2 else self._conv(u)

    @torch.no_grad()
    def _power_step(self, iterations: int) -> None:
        u = self.u
        for _ in range(iterations):
            v = self._apply_transform(u)
            u = self._adjoint(v / v.norm().clamp_min(1e-12))
            u = u / u.norm().clamp_min(1e-12)
        self.u.copy_(u)

    def exact_norm(self) -> Tensor:
        raise NotImplementedError

    def scale(self, exact: bool) -> Tensor:
        inner = self.bias.shape[0]
        if exact:
            return cpl_scale(self.exact_norm(), inner)
        self._power_step(self.power_iterations)
        return cpl_scale(self._apply_transform(self.u.clone()).norm(), inner)  # <= ||W||, gradient through W


class CPLLinear(_CPLLayer):
    """Dense convex potential layer (Meunier et al. 2022): ``x - (2 / ||W||^2) W relu(W^T x + b)``,
    ``W`` ``(features, inner)``; ``inner`` defaults to ``features``."""

    def __init__(self, features: int, inner: int | None = None, *, power_iterations: int = 1) -> None:
        inner = features if inner is None else inner
        super().__init__((features, inner), inner, (1, features), power_iterations)

    def exact_norm(self) -> Tensor:
        return torch.linalg.matrix_norm(self.weight.double(), ord=2)


class CPLConv2d(_CPLLayer):
    """Conv convex potential layer (Meunier et al. 2022): ``W^T`` a stride-1 ``'same'`` zero-padded
    convolution (odd ``kernel_size``); ``||W||`` exact (:mod:`lipbench.nn.conv_bounds`) on ``input_size``."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        inner: int | None = None,
        *,
        input_size: tuple[int, int],
        power_iterations: int = 1,
    ) -> None:
        name = f"CPLConv2d({channels})"
        _check_kernel(name, kernel_size)
        inner = channels if inner is None else inner
        height, width = int(input_size[0]), int(input_size[1])
        geometry_conv = nn.Conv2d(channels, inner, kernel_size, padding="same", bias=False, device="meta")
        plan = conv2d_norm_plan(conv2d_geometry(geometry_conv, (height, width), name))
        super().__init__((inner, channels, kernel_size, kernel_size), inner, (1, channels, height, width), power_iterations)
        self.plan = plan
        self.input_size = (height, width)

    def exact_norm(self) -> Tensor:
        return conv2d_operator_norm(self.weight, self.plan)


def _same_width(layer: str, in_size: int, out_size: int, option: str) -> None:
    if in_size != out_size:
        raise unsupported(layer, option, out_size, f"{option} == {in_size} (a residual block keeps the width)")


def _conv_options(layer: str, in_channels: int, out_channels: int, stride: int) -> None:
    _same_width(layer, in_channels, out_channels, "out_channels")
    if stride != 1:
        raise unsupported(layer, "stride", stride, "stride 1 (a residual block keeps the resolution)")


def _sll_dense(in_features: int, out_features: int) -> SLLLinear:
    _same_width("SLLLinear", in_features, out_features, "out_features")
    return SLLLinear(in_features)


def _sll_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, input_size: tuple[int, int]) -> SLLConv2d:
    _conv_options("SLLConv2d", in_channels, out_channels, stride)
    return SLLConv2d(in_channels, kernel_size)


def _cpl_dense(in_features: int, out_features: int) -> CPLLinear:
    _same_width("CPLLinear", in_features, out_features, "out_features")
    return CPLLinear(in_features)


def _cpl_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, input_size: tuple[int, int]) -> CPLConv2d:
    _conv_options("CPLConv2d", in_channels, out_channels, stride)
    return CPLConv2d(in_channels, kernel_size, input_size=input_size)


SLL_FAMILY = register_family(LayerFamily("sll", SLL_PAPER, "lipbench", _sll_dense, _sll_conv, residual=True))
CPL_FAMILY = register_family(LayerFamily("cpl", CPL_PAPER, "lipbench", _cpl_dense, _cpl_conv, residual=True))
