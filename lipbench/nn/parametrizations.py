"""Weight parametrizations for ``torch.nn.utils.parametrize``.

``SpectralBjorck`` is the paper's constraint (section 5): spectral normalisation (by
power iteration with a persistent vector in training, by the exact spectral norm in
eval mode and export), then Björck orthonormalisation, then a constant factor (the
convolution correction). ``ConvOperatorNormalized`` divides a conv kernel by the exact
operator norm of its convolution (the ``exact`` correction). ``RowNormalized`` divides each output
row by its norm, so each logit of an output layer is separately 1-Lipschitz.

Both are recomputed from the current parameters at every access of ``module.weight``:
there is no cache that could outlive an optimiser step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.nn.conv_bounds import ConvNormPlan, conv2d_operator_norm
from lipbench.nn.functional import bjorck_orthonormalize, exact_spectral_norm, power_iteration

__all__ = ["SpectralBjorck", "ConvOperatorNormalized", "RowNormalized"]

_INITIAL_POWER_ITERATIONS = 15


class SpectralBjorck(nn.Module):
    """``W -> scale * bjorck(W / sigma(W))`` on the weight reshaped to ``(out, -1)``.

    Training mode (the paper's section 5): ``sigma`` comes from power iteration on a
    persistent left vector ``u``, one step per training forward (``power_iterations``),
    then ``sigma = u^T W v``. ``u`` is warmed up with 15 steps at creation.

    Eval mode (``not self.training``, which is also how export evaluates the weight):
    ``sigma`` is the exact spectral norm of the current matrix (largest singular value,
    float64, no gradient), cast to the matrix dtype. The stored ``u`` was updated by the
    last *training* forward, i.e. before the last optimiser step; when that step moves
    the weight far (large learning rate, large batch), ``||W^T u||`` is far below the new
    ``||W||_2``, ``W / sigma`` has singular values above ``sqrt(3)``, outside the range
    ``(0, sqrt(3))`` where Björck's iteration converges, and the eval model and its export
    blow up to non-finite weights. The exact norm is a pure function of the parameters
    (``u`` is neither read nor written), never below the true norm (up to rounding to the
    matrix dtype), so Björck always converges and the export equals the eval model. It
    is treated as a constant by autograd: gradients w.r.t. the input (saliency, attacks)
    flow as usual. A zero matrix keeps a finite (zero) weight: ``sigma`` is clamped to the
    dtype's smallest positive normal number. Training is unchanged (same speed, same
    trained weights).
    """

    def __init__(
        self,
        weight: Tensor,
        bjorck_iterations: int = 15,
        bjorck_beta: float = 0.5,
        power_iterations: int = 1,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        if bjorck_iterations < 0 or power_iterations < 0:
            raise ValueError(f"bjorck_iterations and power_iterations must be >= 0, got {bjorck_iterations}, {power_iterations}")
        if not 0.0 < bjorck_beta <= 0.5:
            raise ValueError(f"bjorck_beta must lie in (0, 0.5] for the iteration to converge, got {bjorck_beta}")
        self.bjorck_iterations = bjorck_iterations
        self.bjorck_beta = bjorck_beta
        self.power_iterations = power_iterations
        self.scale = float(scale)
        matrix = weight.detach().reshape(weight.shape[0], -1)
        generator = torch.Generator(device="cpu").manual_seed(0)
        u = torch.randn(matrix.shape[0], generator=generator, dtype=matrix.dtype).to(matrix.device)
        u, _ = power_iteration(matrix, F.normalize(u, dim=0), _INITIAL_POWER_ITERATIONS)
        self.register_buffer("u", u)

    def spectral_normalize(self, matrix: Tensor) -> Tensor:
        """``matrix / sigma``: power-iteration ``sigma`` (updating ``u`` first) when
        training, the exact spectral norm in eval mode (see the class docstring)."""
        if not self.training:
            return matrix / exact_spectral_norm(matrix)
        if self.power_iterations > 0:
            u, _ = power_iteration(matrix.detach(), self.u, self.power_iterations)
            self.u.copy_(u)
        # A clone, so a later in-place update of the buffer cannot break this graph.
        u = self.u.clone()
        with torch.no_grad():
            v = F.normalize(matrix.mT @ u, dim=0, eps=1e-12)
        sigma = torch.dot(u, matrix @ v)
        return matrix / sigma

    def forward(self, weight: Tensor) -> Tensor:
        matrix = self.spectral_normalize(weight.reshape(weight.shape[0], -1))
        matrix = bjorck_orthonormalize(matrix, self.bjorck_iterations, self.bjorck_beta)
        if self.scale != 1.0:
            matrix = matrix * self.scale
        return matrix.reshape(weight.shape)

    def extra_repr(self) -> str:
        return (
            f"bjorck_iterations={self.bjorck_iterations}, bjorck_beta={self.bjorck_beta}, "
            f"power_iterations={self.power_iterations}, scale={self.scale:.6g}"
        )


class ConvOperatorNormalized(nn.Module):
    """``W -> W / ||conv_W||``, the norm of the layer's convolution for a fixed ``plan``.

    ``||conv_W||`` is :func:`lipbench.nn.conv_bounds.conv2d_operator_norm`, the function
    the certificate uses: the exact norm (polyphase FFT over the input grid, stride
    included) for circular padding, the strict grid bound for zero padding. It is
    recomputed from the current kernel at every forward (float64, then cast), in training
    with autograd through the FFT and the SVD of the transfer matrices, so the weight the
    optimiser sees is exactly the normalised one and the exported layer's bound is 1 up to
    rounding. A zero kernel stays zero (the norm is clamped to the smallest normal number).
    """

    def __init__(self, plan: ConvNormPlan) -> None:
        super().__init__()
        self.plan = plan

    def forward(self, weight: Tensor) -> Tensor:
        norm = conv2d_operator_norm(weight, self.plan).to(weight.dtype)
        return weight / norm.clamp_min(torch.finfo(weight.dtype).tiny)

    def extra_repr(self) -> str:
        return self.plan.describe()


class RowNormalized(nn.Module):
    """``W -> W / ||W_i||`` per output row: each output is 1-Lipschitz on its own."""

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, weight: Tensor) -> Tensor:
        return F.normalize(weight, dim=1, eps=self.eps)
