"""Exact operator norms (L2) of 2-D convolutions and the strict bounds built on them.

Notation, per spatial axis: input size ``n``, kernel ``k`` (with dilation ``d`` the dilated
kernel, zeros inserted, of size ``(k - 1) d + 1``), stride ``s``, padding ``l`` before and
``r`` after (``'same'``: ``l = d(k-1)//2``, ``r = d(k-1) - l``, as PyTorch), and
``n_out = floor((n + l + r - k) / s) + 1`` outputs. PyTorch computes
``y[i] = sum_a w[a] x_pad[s i + a]`` (cross-correlation), ``x_pad[t] = x[t - l]``, zero
outside ``[0, n)`` for ``padding_mode='zeros'`` and ``x[(t - l) mod n]`` for ``'circular'``.

(P) **Polyphase norm, exact.** The stride-``s`` circular convolution on ``Z_(sM)``,
``y[i] = sum_a w[a] x[(s i + a) mod sM]``, is, with ``a = s q + rho`` and the phases
``x_rho[m] = x[s m + rho]`` (space-to-depth), a stride-1 circular convolution on ``Z_M``
with ``c_in s1 s2`` input channels and kernel ``w_rho[q] = w[s q + rho]`` (taps folded
modulo ``M`` when the kernel is longer). The 2-D DFT block-diagonalises it, so its norm is
``max_omega sigma_max(W^(omega))`` over the ``M1 x M2`` frequencies, ``W^(omega)`` the
``(c_out, c_in s1 s2)`` transfer matrix (half the spectrum suffices: ``W^(-omega)`` is the
conjugate). Sampling at ``phi + s i`` instead is a circular shift of the input (orthogonal):
same norm. Groups make the operator block diagonal: the norm is the max over groups.

(Z) **Zero padding, upper bound.** Let ``z[u] = sum_a w[a] x[u + a]`` be the full linear
correlation (``x`` zero outside ``[0, n)``; ``z[u] = 0`` outside ``[1 - k, n - 1]``). The layer
outputs ``y[i] = z[s i - l]``: distinct points of the lattice ``-l + sZ``, those in
``[A, B] = [max(-l, 1 - k), min(s (n_out - 1) - l, n - 1)]`` carry all of ``||y||``. Embed
``x`` in ``Z_N`` (zeros on ``[n, N)``) with ``N >= max(n, n - A, B + k)`` a multiple of ``s``:
for ``u`` in ``[A, B]`` the taps ``u + a`` lie in ``[A, B + k - 1]``; those below 0 wrap to
``[N + A, N) subset [n, N)``, those at or above ``n`` stay in ``[n, N)``, so every tap reads
the right value (no wrap-around) and the circular output at ``u mod N`` equals ``z[u]``.
The lattice points of ``[A, B]`` (fewer than ``N``) stay distinct modulo ``N`` and, as
``s | N``, land on the circular lattice ``-l + sZ_N``. Hence ``||y|| <= ||C_N x~|| <=
||C_N|| ||x||``, ``C_N`` the stride-``s`` circular convolution on ``Z_N``, whose norm is (P).
It is a bound, not the norm (the compression of a convolution to a finite grid loses a
little); it is never above the reshaped-kernel rule
``||w_reshaped|| sqrt(ceil(k1/s1) ceil(k2/s2))`` since
``W^(omega) = w_reshaped (e_omega (x) I)`` with ``||e_omega|| = sqrt(ceil(k1/s1) ceil(k2/s2))``.

(C) **Circular padding, exact at the input size.** Output ``i`` reads the periodic
extension of ``x`` at ``s i - l + a``, i.e. ``y[i] = z~[(s i - l) mod n]`` with ``z~`` the
stride-1 circular correlation on ``Z_n``. With ``g = gcd(n, s)`` the points ``(s i - l) mod n``
run over the lattice ``-l + gZ_n`` (``n / g`` points) with period ``n / g`` in ``i``, so each
point is taken ``floor`` or ``ceil(n_out g / n)`` times. Thus ``||y|| <= sqrt(m) ||C_g||``,
``m = ceil(n_out g / n)`` and ``C_g`` the stride-``g`` circular convolution on ``Z_n`` (P); it
is an equality when ``n_out`` is a multiple of ``n / g``: with ``s | n`` and ``l = k // 2``,
``k`` odd (e.g. 3x3 stride 2 padding 1 on an even size), ``n_out = n / s``: the layer *is*
``C_s``. An axis without padding (either mode) reads no padding and no index wraps, so
(C) holds for it too: it is used where exact (e.g. kernel <= stride, ``s | n``, 'valid':
``n_out = n / s``), (Z) otherwise. The index arguments are per axis, so the cases combine
per axis and the repeats multiply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ConvGeometry",
    "ConvNormPlan",
    "conv2d_geometry",
    "conv2d_norm_plan",
    "conv2d_operator_norm",
    "conv2d_module_bound",
    "conv2d_operator_norm_bound",
    "polyphase_operator_norm",
]

_CHUNK = 4096  # transfer matrices per batched eigendecomposition


@dataclass(frozen=True)
class ConvGeometry:
    """How a convolution meets its input, per axis (height, width); ``padding`` is
    ``(before, after)`` per axis, ``None`` for "any zero padding" (a bound for all)."""

    input_size: tuple[int, int]
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]] | None
    circular: bool
    groups: int = 1

    def effective_kernel(self, axis: int) -> int:
        return (self.kernel_size[axis] - 1) * self.dilation[axis] + 1

    def outputs(self, axis: int) -> int:
        before, after = self.padding[axis] if self.padding is not None else (0, 0)
        return (self.input_size[axis] + before + after - self.effective_kernel(axis)) // self.stride[axis] + 1


@dataclass(frozen=True)
class ConvNormPlan:
    """Stride-``stride`` circular convolution on a ``stride * grid`` grid per axis, times
    ``sqrt(repeats)``: the layer's norm when ``exact``, an upper bound otherwise."""

    stride: tuple[int, int]
    grid: tuple[int, int]
    repeats: int
    exact: bool
    empty: bool
    dilation: tuple[int, int]
    groups: int

    def describe(self) -> str:
        if self.empty:
            return "exact: 0 (no output reads the input)"
        size = f"{self.stride[0] * self.grid[0]}x{self.stride[1] * self.grid[1]}"
        text = f"fft polyphase, stride {self.stride[0]}x{self.stride[1]} circular conv on {size}"
        if self.repeats > 1:
            text += f" x sqrt({self.repeats} repeated outputs)"
        return f"exact: {text}" if self.exact else f"{text} (upper bound)"


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def conv2d_geometry(conv: nn.Conv2d, input_size: tuple[int, int], what: str) -> ConvGeometry:
    """The geometry of ``conv`` on ``input_size``; ``ValueError`` starting with ``what`` for
    padding modes other than zeros/circular or inputs too small for the kernel."""
    if conv.padding_mode not in ("zeros", "circular"):
        raise ValueError(f"{what}: padding_mode={conv.padding_mode!r} has no exact bound here; use 'zeros' or 'circular'")
    kernel, dilation = _pair(conv.kernel_size), _pair(conv.dilation)
    if conv.padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        padding = tuple((total // 2, total - total // 2) for total in totals)
    elif conv.padding == "valid":
        padding = ((0, 0), (0, 0))
    else:
        padding = tuple((p, p) for p in _pair(conv.padding))
    geometry = ConvGeometry(
        (int(input_size[0]), int(input_size[1])),
        kernel,
        _pair(conv.stride),
        dilation,
        padding,
        conv.padding_mode == "circular",
        int(conv.groups),
    )
    if min(geometry.outputs(0), geometry.outputs(1)) < 1:
        raise ValueError(f"{what}: a {tuple(input_size)} input is smaller than the (dilated) kernel")
    return geometry


def _zero_axis(geometry: ConvGeometry, axis: int) -> tuple[int, int, int, bool, bool]:
    """``(stride, grid, repeats, exact, empty)`` of (Z) on one axis."""
    n, k, s = geometry.input_size[axis], geometry.effective_kernel(axis), geometry.stride[axis]
    if geometry.padding is None:
        low, high = 1 - k, n - 1
    else:
        before = geometry.padding[axis][0]
        low, high = max(-before, 1 - k), min(s * (geometry.outputs(axis) - 1) - before, n - 1)
    size = max(n, n - low, high + k)
    return s, -(-size // s), 1, False, high < low


def _circular_axis(geometry: ConvGeometry, axis: int) -> tuple[int, int, int, bool, bool]:
    """``(stride, grid, repeats, exact, empty)`` of (C) on one axis."""
    n, outputs = geometry.input_size[axis], geometry.outputs(axis)
    g = math.gcd(n, geometry.stride[axis])
    period = n // g
    return g, period, -(-outputs // period), outputs % period == 0, False


def conv2d_norm_plan(geometry: ConvGeometry) -> ConvNormPlan:
    """Per axis (C) where circular padding is used, (Z) elsewhere (see the module docstring)."""
    axes = []
    for axis in (0, 1):
        if geometry.padding is None:
            axes.append(_zero_axis(geometry, axis))
        elif geometry.padding[axis] != (0, 0):
            axes.append(_circular_axis(geometry, axis) if geometry.circular else _zero_axis(geometry, axis))
        else:  # reads no padding, no index wraps: (C) holds too; used where it is exact
            circular = _circular_axis(geometry, axis)
            axes.append(circular if circular[3] else _zero_axis(geometry, axis))
    (s1, m1, r1, e1, z1), (s2, m2, r2, e2, z2) = axes
    return ConvNormPlan((s1, s2), (m1, m2), r1 * r2, e1 and e2, z1 or z2, geometry.dilation, geometry.groups)


def _dilate(weight: Tensor, dilation: tuple[int, int]) -> Tensor:
    """The dilated kernel (zeros between taps): same operator with dilation 1."""
    if dilation == (1, 1):
        return weight
    out, inp, k1, k2 = weight.shape
    dilated = weight.new_zeros(out, inp, (k1 - 1) * dilation[0] + 1, (k2 - 1) * dilation[1] + 1)
    dilated[:, :, :: dilation[0], :: dilation[1]] = weight
    return dilated


def _fold(kernel: Tensor, size: int, dim: int) -> Tensor:
    """Sum the taps of ``dim`` modulo ``size`` (a circular convolution on ``Z_size``)."""
    dim %= kernel.ndim
    length = kernel.shape[dim]
    if length <= size:
        return kernel
    padded = F.pad(kernel, [0, 0] * (kernel.ndim - 1 - dim) + [0, -length % size])
    shape = list(padded.shape)
    shape[dim : dim + 1] = [shape[dim] // size, size]
    return padded.reshape(shape).sum(dim=dim)


def polyphase_operator_norm(weight: Tensor, stride: tuple[int, int], grid: tuple[int, int], groups: int = 1) -> Tensor:
    """Exact norm (P) of the stride-``stride`` circular convolution on ``stride * grid``.

    ``weight`` is a conv kernel ``(out, in / groups, k1, k2)`` (dilation 1); computed in
    float64 and differentiable (autograd through the FFT and ``eigvalsh``); a 0-d float64
    tensor. ``sigma_max(A)^2`` is the largest eigenvalue of the Gram matrix ``A A^H`` of the
    smaller side, exact up to float64 rounding (relative ~1e-15, like an SVD).
    """
    out, inp, k1, k2 = weight.shape
    (s1, s2), (m1, m2) = stride, grid
    q1, q2 = -(-k1 // s1), -(-k2 // s2)
    kernel = F.pad(weight.double(), (0, q2 * s2 - k2, 0, q1 * s1 - k1))
    kernel = kernel.reshape(groups, out // groups, inp, q1, s1, q2, s2).permute(0, 1, 2, 4, 6, 3, 5)
    kernel = kernel.reshape(groups, out // groups, inp * s1 * s2, q1, q2)  # space-to-depth
    kernel = _fold(_fold(kernel, m1, -2), m2, -1)
    transfer = torch.fft.rfft2(kernel, s=(m1, m2))  # (groups, out/g, in s1 s2 / g, m1, m2//2+1)
    matrices = transfer.permute(0, 3, 4, 1, 2).reshape(-1, out // groups, inp * s1 * s2)
    if matrices.shape[-2] > matrices.shape[-1]:
        matrices = matrices.mH  # the Gram of the smaller side: same largest eigenvalue
    # sigma_max^2 = largest eigenvalue of A A^H (Hermitian; eigvalsh is ~2x faster than an SVD)
    squares = [torch.linalg.eigvalsh(chunk @ chunk.mH)[:, -1].amax() for chunk in matrices.split(_CHUNK)]
    return torch.stack(squares).amax().clamp_min(0.0).sqrt()


def conv2d_operator_norm(weight: Tensor, plan: ConvNormPlan) -> Tensor:
    """``sqrt(repeats)`` times (P) for ``plan``: the exact norm or a strict upper bound of
    the layer (see the module docstring); float64, differentiable in ``weight``."""
    if plan.empty:
        return weight.new_zeros((), dtype=torch.float64)
    norm = polyphase_operator_norm(_dilate(weight, plan.dilation), plan.stride, plan.grid, plan.groups)
    return norm * math.sqrt(plan.repeats) if plan.repeats > 1 else norm


@torch.no_grad()
def conv2d_module_bound(conv: nn.Conv2d, input_size: tuple[int, int], what: str) -> tuple[float, str]:
    """Strict bound (exact where the plan says so) of ``conv`` on ``input_size``, and how."""
    plan = conv2d_norm_plan(conv2d_geometry(conv, input_size, what))
    return float(conv2d_operator_norm(conv.weight.detach().double(), plan)), plan.describe()


def conv2d_operator_norm_bound(
    weight: Tensor,
    input_size: tuple[int, int],
    *,
    stride: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> float:
    """Strict bound of a zero-padded convolution with ``weight`` on ``input_size``, valid
    for *every* padding: (Z) with ``[A, B] = [1 - k, n - 1]``, i.e. the exact norm of the
    stride-``s`` circular convolution on ``input + kernel - 1`` rounded up to a multiple of ``s``."""
    k1, k2 = weight.shape[-2:]
    geometry = ConvGeometry(
        (int(input_size[0]), int(input_size[1])), (k1, k2), _pair(stride), _pair(dilation), None, False, groups
    )
    with torch.no_grad():
        return float(conv2d_operator_norm(weight.detach().double(), conv2d_norm_plan(geometry)))
