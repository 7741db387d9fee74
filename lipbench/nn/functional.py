"""Pure functions behind the Lipschitz layers (no state, no modules).

Björck orthonormalisation, power iteration, convolution correction factors, GroupSort
activations and L2-norm pooling. The modules in :mod:`lipbench.nn.layers` and
:mod:`lipbench.nn.parametrizations` are thin wrappers around these.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bjorck_orthonormalize",
    "power_iteration",
    "exact_spectral_norm",
    "strict_conv_factor",
    "lambda_conv_factor",
    "group_sort",
    "group_sort_2",
    "full_sort",
    "l2_norm_pool2d",
    "global_l2_norm_pool2d",
]


def _bjorck_factor(eigenvalues: Tensor, iterations: int, beta: float) -> Tensor:
    """``q(λ)`` with ``bjorck(W) = U q(Λ) U^T W`` for ``W W^T = U Λ U^T`` (float64 in, out).

    The matrix recursion ``T_k = (1+β) I - β S_k``, ``P_{k+1} = T_k P_k``,
    ``S_{k+1} = T_k^2 S_k`` acts on each eigenvalue separately.
    """
    factor = torch.ones_like(eigenvalues)
    gram = eigenvalues.clone()
    for _ in range(iterations):
        step = gram.mul(-beta).add_(1.0 + beta)
        factor.mul_(step)
        gram.mul_(step).mul_(step)
    return factor


def _divided_differences(eigenvalues: Tensor, iterations: int, beta: float) -> tuple[Tensor, Tensor]:
    """``q(λ_i)`` and the matrix ``(q(λ_i) - q(λ_j)) / (λ_i - λ_j)`` (``q'`` when λ_i ≈ λ_j).

    ``q'`` comes from one complex-step evaluation, ``q(λ + ih) = q(λ) + ih q'(λ) + O(h^2)``,
    which is exact to machine precision for this polynomial (no cancellation).
    """
    step = 1e-30
    values = _bjorck_factor(torch.complex(eigenvalues, torch.full_like(eigenvalues, step)), iterations, beta)
    factor, derivative = values.real.contiguous(), values.imag / step
    scale = float(eigenvalues.abs().max().clamp_min(1.0))
    gap = eigenvalues[:, None] - eigenvalues[None, :]
    close = gap.abs() <= 1e-8 * scale
    quotient = (factor[:, None] - factor[None, :]) / torch.where(close, torch.ones_like(gap), gap)
    return factor, torch.where(close, (derivative[:, None] + derivative[None, :]) / 2, quotient)


class _BjorckEigen(torch.autograd.Function):
    """Björck's iteration evaluated in the eigenbasis of the small Gram matrix.

    ``G = W W^T = U Λ U^T`` (``W`` has at most as many rows as columns), the result is
    ``U q(Λ) U^T W`` with ``q`` the scalar form of the iteration (float64). The backward
    is the Daleckii-Krein formula for a symmetric matrix function, with divided
    differences of ``q``; it replaces ~3 matrix products per iteration in both passes.
    """

    @staticmethod
    def forward(ctx, matrix: Tensor, iterations: int, beta: float) -> Tensor:  # type: ignore[override]
        gram = (matrix @ matrix.mT).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(gram)
        factor, divided = _divided_differences(eigenvalues, iterations, beta)
        polynomial = ((eigenvectors * factor) @ eigenvectors.mT).to(matrix.dtype)
        ctx.save_for_backward(matrix, polynomial, eigenvectors, divided)
        return polynomial @ matrix

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        matrix, polynomial, eigenvectors, divided = ctx.saved_tensors
        grad_polynomial = (grad_output @ matrix.mT).double()
        inner = eigenvectors.mT @ grad_polynomial @ eigenvectors
        grad_gram = (eigenvectors @ (divided * inner) @ eigenvectors.mT).to(matrix.dtype)
        grad_matrix = polynomial @ grad_output + (grad_gram + grad_gram.mT) @ matrix
        return grad_matrix, None, None


def _bjorck_gram_iteration(matrix: Tensor, iterations: int, beta: float) -> Tensor:
    """The iteration on the small Gram matrix with plain autograd (any device)."""
    gram = matrix @ matrix.mT  # S_0 = W_0 W_0^T, small side
    scaled_identity = torch.eye(gram.shape[0], dtype=matrix.dtype, device=matrix.device) * (1.0 + beta)
    polynomial = None  # P_k with W_k = P_k W_0; None stands for the identity
    for iteration in range(iterations):
        # W_{k+1} = T_k W_k with T_k = (1 + beta) I - beta S_k and S_k = W_k W_k^T.
        step = torch.add(scaled_identity, gram, alpha=-beta)
        polynomial = step if polynomial is None else step @ polynomial
        if iteration + 1 < iterations:
            # S_{k+1} = T_k S_k T_k = T_k^2 S_k (T_k is a polynomial in S_k: they commute).
            gram = step @ (step @ gram)
    return polynomial @ matrix


def bjorck_orthonormalize(weight: Tensor, iterations: int = 15, beta: float = 0.5, method: str = "auto") -> Tensor:
    """Björck orthonormalisation of a 2-D matrix (paper section 5, 15 iterations).

    The result is the textbook iteration ``W <- (1 + beta) W - beta W W^T W`` applied
    ``iterations`` times. Every iterate is ``P_k W_0`` with ``P_k`` a polynomial in the
    small Gram matrix ``G = W_0 W_0^T`` (taken on the smaller side of ``W``), so the
    work happens on ``min(m, n)``-square matrices:

    * ``method="gram"``: the iteration on ``G`` (3 small products per step), autograd;
    * ``method="eigen"``: the same polynomial evaluated on the eigenvalues of ``G``,
      with a closed-form backward (fastest on CPU);
    * ``method="auto"``: ``eigen`` on CPU, ``gram`` elsewhere (``eigh`` is slow on GPUs).

    Singular values in ``(0, sqrt(3))`` converge to 1; scale the input to spectral norm
    about 1 first (spectral normalisation does this).
    """
    if weight.ndim != 2:
        raise ValueError(f"bjorck_orthonormalize expects a 2-D matrix, got shape {tuple(weight.shape)}")
    if iterations < 0:
        raise ValueError(f"bjorck iterations must be >= 0, got {iterations}")
    if method not in ("auto", "gram", "eigen"):
        raise ValueError(f"bjorck method must be 'auto', 'gram' or 'eigen', got {method!r}")
    if iterations == 0:
        return weight
    if method == "auto":
        method = "eigen" if weight.device.type == "cpu" else "gram"
    transpose = weight.shape[0] > weight.shape[1]
    matrix = weight.mT if transpose else weight
    if method == "eigen":
        result = _BjorckEigen.apply(matrix, iterations, beta)
    else:
        result = _bjorck_gram_iteration(matrix, iterations, beta)
    return result.mT if transpose else result


@torch.no_grad()
def power_iteration(weight: Tensor, u: Tensor, iterations: int = 1, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Power iteration for the top singular pair of a 2-D ``weight``; returns ``(u, v)``.

    ``u`` is the persistent left vector (shape ``(m,)``). The estimate ``u^T W v``
    approaches the spectral norm from below, so it never serves as a certified bound.
    """
    v = F.normalize(weight.mT @ u, dim=0, eps=eps)
    for _ in range(iterations):
        u = F.normalize(weight @ v, dim=0, eps=eps)
        v = F.normalize(weight.mT @ u, dim=0, eps=eps)
    return u, v


def exact_spectral_norm(matrix: Tensor) -> Tensor:
    """The largest singular value of a 2-D ``matrix`` (SVD in float64, no gradient), as a
    0-d tensor of ``matrix``'s dtype, clamped to the dtype's smallest positive normal
    number so that dividing a zero matrix by it gives zeros, not NaN."""
    with torch.no_grad():
        sigma = torch.linalg.matrix_norm(matrix.detach().double(), ord=2).to(matrix.dtype)
        return sigma.clamp_min(torch.finfo(matrix.dtype).tiny)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def strict_conv_factor(kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1) -> float:
    """Strict correction ``1 / sqrt(ceil(k1/s1) * ceil(k2/s2))`` for an orthonormal reshaped kernel.

    Each input pixel lies in at most ``ceil(k1/s1) * ceil(k2/s2)`` receptive fields, so a
    convolution whose reshaped kernel has spectral norm 1 has operator norm at most the
    square root of that count, whatever the padding and input size.
    """
    k1, k2 = _pair(kernel_size)
    s1, s2 = _pair(stride)
    return 1.0 / math.sqrt(math.ceil(k1 / s1) * math.ceil(k2 / s2))


def lambda_conv_factor(kernel_size: int | tuple[int, int], input_size: tuple[int, int]) -> float:
    """The paper's factor Λ (eq. 11): average duplication of a pixel under zero padding.

    ``Λ = sqrt(h w / ((k1 h - r1 (r1 + 1)) (k2 w - r2 (r2 + 1))))`` with ``r = (k - 1) / 2``,
    for stride 1 and 'same' zero padding. It is an average, not a maximum: a constant 3x3
    kernel on 28x28 reaches an operator norm of about 1.016 with it. Not a strict bound.
    """
    k1, k2 = _pair(kernel_size)
    h, w = input_size
    r1, r2 = (k1 - 1) / 2, (k2 - 1) / 2
    return math.sqrt((h * w) / ((k1 * h - r1 * (r1 + 1)) * (k2 * w - r2 * (r2 + 1))))


def group_sort(x: Tensor, group_size: int, dim: int = 1) -> Tensor:
    """GroupSort: sort contiguous groups of ``group_size`` features along ``dim`` (Anil et al. 2019).

    A permutation of its input at every point, hence 1-Lipschitz and gradient-norm preserving.
    """
    size = x.shape[dim]
    if group_size < 2 or size % group_size:
        raise ValueError(f"GroupSort needs group_size >= 2 dividing the {size} features of dim {dim}, got {group_size}")
    if group_size == 2:
        return group_sort_2(x, dim)
    if group_size == size:
        return full_sort(x, dim)
    shape = x.shape[:dim] + (size // group_size, group_size) + x.shape[dim + 1 :]
    return torch.sort(x.reshape(shape), dim=dim + 1).values.reshape(x.shape)


class _GroupSort2(torch.autograd.Function):
    """GroupSort2 on the two halves of ``dim``: ``(min(a, b), max(a, b))``.

    Pairs feature ``i`` with feature ``i + C/2`` (a fixed permutation of the classic
    adjacent pairing, so the same function class), which keeps both halves contiguous.
    Forward and backward each write one output tensor in place and save only a boolean
    mask: on CPU, fresh large allocations cost more than the arithmetic.
    """

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:  # type: ignore[override]
        first, second = x.chunk(2, dim=dim)
        output = torch.empty_like(x)
        low, high = output.chunk(2, dim=dim)
        torch.minimum(first, second, out=low)
        torch.maximum(first, second, out=high)
        swap = torch.empty_like(first)  # 1.0 where first > second, else 0.0 (lerp weight)
        torch.gt(first, second, out=swap)
        ctx.save_for_backward(swap)
        ctx.dim = dim
        return output

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        grad_low, grad_high = grad_output.chunk(2, dim=ctx.dim)
        # ``first`` received min's gradient unless it was the max (weight 1), and vice versa.
        # lerp with weights in {0, 1} is exact and, on CPU, ~10x faster than torch.where.
        if torch.is_grad_enabled():  # double backward: stay differentiable
            return torch.cat(
                (torch.lerp(grad_low, grad_high, weight), torch.lerp(grad_high, grad_low, weight)), dim=ctx.dim
            ), None
        grad_input = torch.empty_like(grad_output)
        grad_first, grad_second = grad_input.chunk(2, dim=ctx.dim)
        torch.lerp(grad_low, grad_high, weight, out=grad_first)
        torch.lerp(grad_high, grad_low, weight, out=grad_second)
        return grad_input, None


def group_sort_2(x: Tensor, dim: int = 1) -> Tensor:
    """GroupSort with groups of 2 (MaxMin), the paper's activation in convolutions."""
    if x.shape[dim] % 2:
        raise ValueError(f"GroupSort2 needs an even number of features along dim {dim}, got {x.shape[dim]}")
    if torch.is_grad_enabled() and x.requires_grad:
        return _GroupSort2.apply(x, dim)
    first, second = x.chunk(2, dim=dim)
    output = torch.empty_like(x)
    low, high = output.chunk(2, dim=dim)
    torch.minimum(first, second, out=low)
    torch.maximum(first, second, out=high)
    return output


def full_sort(x: Tensor, dim: int = 1) -> Tensor:
    """FullSort: sort all features along ``dim`` (the paper's activation in dense layers)."""
    return torch.sort(x, dim=dim).values


def _window_sum_of_squares(x: Tensor, kernel: tuple[int, int]) -> Tensor:
    return F.avg_pool2d(x.square(), kernel, stride=kernel).mul_(kernel[0] * kernel[1])


class _L2NormPool2d(torch.autograd.Function):
    """``sqrt(sum_window x^2)`` with a one-pass backward ``x * g / out`` (0 where out = 0)."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel: tuple[int, int]) -> Tensor:  # type: ignore[override]
        output = _window_sum_of_squares(x, kernel).sqrt_()
        ctx.save_for_backward(x, output)
        ctx.kernel = kernel
        return output

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        x, output = ctx.saved_tensors
        k1, k2 = ctx.kernel
        # Zero windows (output 0) get gradient 0; nan_to_num is much cheaper than where on CPU.
        scale = (grad_output / output).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        covered = x[..., : output.shape[-2] * k1, : output.shape[-1] * k2]
        # Upsample the per-window scale to pixels, then one contiguous multiply (faster on
        # CPU than a broadcast over a 6-D window view).
        grad_covered = scale.repeat_interleave(k2, dim=-1).repeat_interleave(k1, dim=-2).mul_(covered)
        if grad_covered.shape == x.shape:
            return grad_covered, None
        grad_input = torch.zeros_like(x)  # rows/columns beyond the last full window
        grad_input[..., : covered.shape[-2], : covered.shape[-1]] = grad_covered
        return grad_input, None


def l2_norm_pool2d(x: Tensor, kernel_size: int | tuple[int, int]) -> Tensor:
    """L2-norm pooling over non-overlapping windows: ``sqrt(sum_window x^2)``.

    With stride equal to the window, the map is 1-Lipschitz and preserves the norm of
    every window (P=2 pooling). Trailing rows/columns that do not fill a window are
    dropped, as in ``avg_pool2d``. The gradient at a zero window is taken as 0.
    """
    kernel = _pair(kernel_size)
    if x.ndim != 4:
        raise ValueError(f"l2_norm_pool2d expects (N, C, H, W) inputs, got shape {tuple(x.shape)}")
    if torch.is_grad_enabled() and x.requires_grad:
        return _L2NormPool2d.apply(x, kernel)
    return _window_sum_of_squares(x, kernel).sqrt_()


def global_l2_norm_pool2d(x: Tensor) -> Tensor:
    """Global L2-norm pooling: per channel ``||x_c||_2`` over all positions, shape ``(N, C)``."""
    return torch.linalg.vector_norm(x.flatten(-2), dim=-1)
