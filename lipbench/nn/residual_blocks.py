"""Residual 1-Lipschitz blocks ``h(x) = x - W diag(s) relu(W^T x + b)`` (SLL, CPL): the scales the
papers prescribe, the plain exported block, and the certificate it checks on its own tensors.

``W^T`` is the block's *transform*: a dense map (``nn.Linear(features, inner)``, weight ``W^T``) or a
stride-1 ``'same'`` zero-padded convolution (``nn.Conv2d(channels, inner, k)``, odd ``k``); ``W`` is its
adjoint (``F.linear`` with the transposed weight, ``F.conv_transpose2d`` with the same padding).

Both families are instances of Araujo et al., "A unified algebraic perspective on Lipschitz neural
networks" (ICLR 2023), Theorem 3: with ``sigma`` slope-restricted in ``[0, 1]`` (ReLU) and ``T``
diagonal positive, ``h(x) = x - 2 W T^{-1} sigma(W^T x + b)`` is 1-Lipschitz when ``T - W^T W >= 0``.
(Proof sketch: with ``u = T^{-1} (sigma(W^T x + b) - sigma(W^T y + b))`` the slope restriction gives
``u^T T u <= u^T W^T (x - y)``, so ``||h(x) - h(y)||^2 <= ||x - y||^2 - 4 u^T (T - W^T W) u``.)
Here ``s = 2 T^{-1}``:

* SLL (Araujo et al. 2023, Theorem 3 with the Gershgorin choice): ``t_i = sum_j |W^T W|_ij q_j / q_i``,
  ``q > 0``; for a convolution ``|W^T W|`` sums the absolute cross-correlations of the kernel's
  channels over all shifts (the rows of the Toeplitz Gram), which dominates the Gram of the
  zero-padded or circular convolution on any grid.
* CPL (Meunier et al., "A dynamical system perspective for Lipschitz neural networks", ICML 2022, the
  convex potential layer, an explicit Euler step of a convex potential flow with the largest 1-Lipschitz
  step ``2 / ||W||^2``): ``h(x) = x - (2 / ||W||^2) W sigma(W^T x + b)``, i.e. ``T = ||W||^2 I``.

(Theorem and equation numbers are as we read the papers; the proof sketch above is the check.)

Both scales are multiplied by ``1 - SAFETY_MARGIN`` so that the float32-stored tensors keep the
condition with room for rounding; the exported block re-checks it in float64 (see
:meth:`ResidualBlock.lipschitz_bound`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.nn.bounds import dense_operator_norm
from lipbench.nn.conv_bounds import conv2d_geometry, conv2d_norm_plan, conv2d_operator_norm

__all__ = [
    "SAFETY_MARGIN",
    "ResidualBlock",
    "UnconstrainedResidual",
    "residual_forward",
    "sll_dense_scale",
    "sll_conv_scale",
    "cpl_scale",
]

SAFETY_MARGIN = 1e-6
"""Relative slack of every scale: ``s = 2 (1 - margin) / t`` (float32 rounding is ~6e-8)."""


def _scale_from_t(t: Tensor) -> Tensor:
    """``s = 2 (1 - margin) / t``; a zero ``t_i`` (a zero column of ``W``) gives ``s_i = 0``."""
    positive = t > 0
    return torch.where(positive, 2.0 * (1.0 - SAFETY_MARGIN) / torch.where(positive, t, torch.ones_like(t)), 0.0)


def _gershgorin_t(abs_gram: Tensor, log_q: Tensor) -> Tensor:
    """``t_i = sum_j |G|_ij q_j / q_i`` with ``q = exp(log_q)`` (Araujo et al. 2023, Theorem 3)."""
    log_q = log_q.double()
    return (abs_gram * torch.exp(log_q[None, :] - log_q[:, None])).sum(dim=1)


def sll_dense_scale(weight: Tensor, log_q: Tensor) -> Tensor:
    """SLL scale ``s = 2 T^{-1}`` for a dense ``W`` of shape ``(features, inner)``; float64, differentiable."""
    w = weight.double()
    return _scale_from_t(_gershgorin_t((w.mT @ w).abs(), log_q))


def sll_conv_scale(kernel: Tensor, log_q: Tensor) -> Tensor:
    """SLL scale for the convolution with ``kernel`` ``(inner, channels, k1, k2)`` (the map ``W^T``):
    ``|W^T W|_ij`` summed over shifts is ``sum_s |(K_i * K_j)[s]|``, the kernel's absolute
    autocorrelation (Araujo et al. 2023, section 4); float64, differentiable. (The reference code's
    conv ``compute_t`` multiplies by ``q_i / q_i``; we use the theorem's ``q_j / q_i``.)"""
    k = kernel.double()
    k1, k2 = k.shape[-2:]
    autocorrelation = F.conv2d(k, k, padding=(k1 - 1, k2 - 1))  # (inner, inner, 2 k1 - 1, 2 k2 - 1)
    return _scale_from_t(_gershgorin_t(autocorrelation.abs().sum(dim=(2, 3)), log_q))


def cpl_scale(norm: Tensor, inner: int) -> Tensor:
    """CPL scale ``2 / ||W||^2`` (Meunier et al. 2022, convex potential layer) for each of the ``inner`` channels; float64."""
    squared = norm.double().reshape(1) ** 2
    return _scale_from_t(squared).repeat(inner)


def residual_forward(x: Tensor, transform_weight: Tensor, bias: Tensor | None, scale: Tensor) -> Tensor:
    """``x - W diag(scale) relu(W^T x + b)``; ``transform_weight`` is ``W^T`` as a Linear weight
    ``(inner, features)`` or a conv kernel ``(inner, channels, k1, k2)`` (odd sizes, 'same' padding)."""
    if transform_weight.ndim == 2:
        hidden = torch.relu(F.linear(x, transform_weight, bias)) * scale
        return x - F.linear(hidden, transform_weight.mT)
    padding = (transform_weight.shape[-2] // 2, transform_weight.shape[-1] // 2)
    hidden = torch.relu(F.conv2d(x, transform_weight, bias, padding=padding)) * scale.reshape(-1, 1, 1)
    return x - F.conv_transpose2d(hidden, transform_weight, padding=padding)


NormFunction = Callable[[Tensor], tuple[float, str]]


class ResidualBlock(nn.Module):
    """Plain exported SLL/CPL block ``x - W diag(scale) relu(W^T x + b)`` that certifies itself.

    ``transform`` holds ``W^T`` and ``b`` (``nn.Linear`` or a stride-1 ``'same'`` ``nn.Conv2d``),
    ``scale`` the diagonal ``s = 2 T^{-1}`` (a buffer). ``kind`` names the family in the certificate.
    """

    def __init__(self, transform: nn.Linear | nn.Conv2d, scale: Tensor, kind: str) -> None:
        super().__init__()
        self.transform = transform
        self.register_buffer("scale", scale.detach().clone())
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        return residual_forward(x, self.transform.weight, self.transform.bias, self.scale)

    def _norm_function(self, input_shape: tuple[int, ...]) -> NormFunction:
        """Exact norm (dense: SVD) or strict bound (conv: :mod:`lipbench.nn.conv_bounds` at this input
        size) of the transform with a given weight, computed in float64."""
        what = f"ResidualBlock({self.kind}).lipschitz_bound"
        if isinstance(self.transform, nn.Linear):
            if tuple(input_shape) != (self.transform.in_features,):
                raise ValueError(f"{what}: expected input shape ({self.transform.in_features},), got {tuple(input_shape)}")
            return lambda weight: (dense_operator_norm(weight), "svd")
        if len(input_shape) != 3 or input_shape[0] != self.transform.in_channels:
            raise ValueError(f"{what}: expected input shape ({self.transform.in_channels}, h, w), got {tuple(input_shape)}")
        plan = conv2d_norm_plan(conv2d_geometry(self.transform, (int(input_shape[1]), int(input_shape[2])), what))
        return lambda weight: (float(conv2d_operator_norm(weight, plan)), plan.describe())

    @torch.no_grad()
    def condition_value(self, input_shape: tuple[int, ...]) -> tuple[float, str]:
        """``v = ||diag(sqrt(scale / 2)) W^T||^2`` in float64: ``v <= 1`` iff Theorem 3's condition
        ``T - W^T W >= 0`` holds for ``T = 2 diag(scale)^{-1}``; ``nan`` when a scale is negative."""
        norm_of = self._norm_function(input_shape)
        scale, weight = self.scale.double(), self.transform.weight.double()
        if not bool((scale >= 0).all()):
            return float("nan"), "a negative scale: Theorem 3 does not apply"
        norm, method = norm_of(weight * torch.sqrt(scale / 2).reshape(-1, *[1] * (weight.ndim - 1)))
        return norm**2, method

    @torch.no_grad()
    def lipschitz_bound(self, input_shape: tuple[int, ...]) -> tuple[float, str]:
        """1 when the exported tensors satisfy Theorem 3's condition (``v <= 1``, checked in float64),
        else the triangle bound ``1 + ||W diag(scale)|| ||W^T||`` (strict: ``relu`` is 1-Lipschitz)."""
        value, how = self.condition_value(input_shape)
        condition = f"||diag(sqrt(scale/2)) W^T||^2 = {value:.9g}"
        if value <= 1.0:
            return 1.0, f"1 ({self.kind} condition T - W^T W >= 0 checked: {condition} <= 1; {how})"
        norm_of = self._norm_function(input_shape)
        weight, scale = self.transform.weight.double(), self.scale.double()
        out_norm, _ = norm_of(weight * scale.reshape(-1, *[1] * (weight.ndim - 1)))
        in_norm, method = norm_of(weight)
        return 1.0 + out_norm * in_norm, (
            f"1 + ||W diag(scale)|| ||W^T|| = 1 + {out_norm:.6g} * {in_norm:.6g} (triangle bound; the {self.kind} "
            f"check failed: {condition}, not <= 1; {method})"
        )

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class UnconstrainedResidual(nn.Module):
    """The unconstrained twin ``x + project(relu(expand(x)))``: two plain, independent, freshly
    initialised layers (``project`` without bias), the same shapes as the constrained block."""

    def __init__(self, expand: nn.Module, project: nn.Module) -> None:
        super().__init__()
        self.expand = expand
        self.project = project

    def forward(self, x: Tensor) -> Tensor:
        return x + self.project(torch.relu(self.expand(x)))
