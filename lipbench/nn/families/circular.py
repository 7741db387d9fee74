"""Our own orthogonal circular convolutions whose forward is not one ``nn.Conv2d``:
Cayley (Trockman & Kolter 2021) and SOC (Singla & Feizi 2021), plus their dense layers.

Both are circular convolutions on a fixed ``input_size`` grid (``n1 x n2``): linear,
equivariant to circular shifts, so each *is* one circular convolution with a kernel of
at most ``n1 x n2`` taps. :meth:`CircularOperatorConv.export_plain` measures that kernel
exactly by probing the bias-free map with unit impulses in float64 and returns an
``nn.Conv2d(kernel_size=input_size, stride, padding_mode='circular')`` (``'same'``
padding at stride 1), whose norm :mod:`lipbench.nn.conv_bounds` computes exactly at
``input_size``. Stride ``s`` is the papers' invertible downsampling (``pixel_unshuffle``)
followed by the stride-1 layer on the ``n / s`` grid: still one stride-``s`` circular
convolution of the input. The layers refuse other input sizes (their export would not
be the same map).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.nn.families.aol import kernel_autocorrelation

__all__ = ["CircularOperatorConv", "CayleyConv2d", "SOCConv2d", "CayleyLinear", "ExpSkewLinear", "cayley_transform"]


def cayley_transform(weight: Tensor) -> Tensor:
    """Trockman & Kolter's rectangular Cayley transform (their eq. for ``cout >= cin``):
    ``A = U - U^H + V^H V``, ``Q = [(I + A)^(-1)(I - A); -2 V (I + A)^(-1)]``, orthonormal
    columns; ``cout < cin`` uses the transpose. Batched over leading dims, real or complex."""
    cout, cin = weight.shape[-2:]
    if cin > cout:
        return cayley_transform(weight.mT).mT
    upper, lower = weight[..., :cin, :], weight[..., cin:, :]
    eye = torch.eye(cin, dtype=weight.dtype, device=weight.device)
    skew_plus = upper - upper.mH + lower.mH @ lower
    top = torch.linalg.solve(eye + skew_plus, eye - skew_plus)
    bottom = -2 * torch.linalg.solve(eye + skew_plus, lower, left=False)
    return torch.cat((top, bottom), dim=-2)


class CircularOperatorConv(nn.Module):
    """Base of the circular layers: ``forward = linear(pixel_unshuffle(x, stride)) + bias``
    on ``input_size`` only (stride ``s > 1``: the papers' invertible downsampling, an
    orthogonal permutation to ``in s^2`` channels on the ``n / s`` grid, then a stride-1
    layer there); exports to the one circular ``nn.Conv2d`` that equals it (probed, float64).

    Subclasses implement :meth:`linear` on ``inner_channels`` channels and the ``grid``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, input_size: tuple[int, int], stride: int = 1
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size, self.stride = in_channels, out_channels, kernel_size, stride
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if stride < 1 or any(size % stride for size in self.input_size):
            raise ValueError(f"{type(self).__name__}: input_size {self.input_size} must be divisible by stride={stride}")
        self.inner_channels = in_channels * stride * stride
        self.grid = (self.input_size[0] // stride, self.input_size[1] // stride)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def linear(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"{type(self).__name__}: built for {self.input_size[0]}x{self.input_size[1]} inputs "
                f"(its export is the circular convolution on that grid), got {tuple(x.shape[-2:])}"
            )
        if self.stride > 1:
            x = F.pixel_unshuffle(x, self.stride)
        return self.linear(x) + self.bias.view(1, -1, 1, 1)

    def export_padding(self) -> str | tuple[int, int]:
        """``'same'`` (stride 1), else ``p = ceil((n - s) / 2)``: then ``(2p) // s + 1 = n / s`` outputs."""
        if self.stride == 1:
            return "same"
        return tuple((size - self.stride + 1) // 2 for size in self.input_size)

    @torch.no_grad()
    def probed_kernel(self) -> Tensor:
        """The ``(out, in, n1, n2)`` kernel ``w`` of the stride-``s`` circular conv equal to the layer.

        Bias-free, the layer is ``y[i] = sum_u g[u] x[(s i + u) mod n]`` (per axis, ``u`` in
        ``Z_n``): an impulse at phase ``r`` (``0 <= r < s``) of channel ``j`` gives
        ``y[o, i] = g[o, j, (r - s i) mod n]``, and these cover ``Z_n`` once. PyTorch reads
        ``x[(s i + a - p) mod n]`` (left padding ``p``), so ``w[a] = g[(a - p) mod n]``.
        """
        twin, s = copy.deepcopy(self).double(), self.stride
        (n1, n2), cin = self.input_size, self.in_channels
        probes = torch.zeros(cin, s, s, cin, n1, n2, dtype=torch.float64, device=self.bias.device)
        for r1 in range(s):
            for r2 in range(s):
                probes[torch.arange(cin), r1, r2, torch.arange(cin), r1, r2] = 1.0
        inputs = probes.reshape(cin * s * s, cin, n1, n2)
        response = twin.linear(F.pixel_unshuffle(inputs, s) if s > 1 else inputs)
        response = response.reshape(cin, s, s, self.out_channels, *self.grid)
        offsets = torch.zeros(self.out_channels, cin, n1, n2, dtype=torch.float64, device=self.bias.device)
        for r1 in range(s):
            for r2 in range(s):
                rows = (r1 - s * torch.arange(self.grid[0])) % n1
                cols = (r2 - s * torch.arange(self.grid[1])) % n2
                offsets[:, :, rows[:, None], cols[None, :]] = response[:, r1, r2].transpose(0, 1)
        padding = self.export_padding()
        left = ((n1 - 1) // 2, (n2 - 1) // 2) if padding == "same" else padding
        rows, cols = (torch.arange(n1) - left[0]) % n1, (torch.arange(n2) - left[1]) % n2
        return offsets[:, :, rows][:, :, :, cols]

    def export_plain(self) -> nn.Conv2d:
        """``nn.Conv2d(in, out, input_size, stride, padding_mode='circular')`` equal to the layer, eval mode."""
        kernel = self.probed_kernel()
        dtype = self.bias.dtype
        plain = nn.Conv2d(
            self.in_channels, self.out_channels, self.input_size, self.stride, self.export_padding(), padding_mode="circular"
        )
        plain = plain.to(device=self.bias.device, dtype=dtype)
        with torch.no_grad():
            plain.weight.copy_(kernel.to(dtype))
            plain.bias.copy_(self.bias.detach())
        return plain.eval()

    def unconstrained_twin(self) -> nn.Conv2d:
        k, s = self.kernel_size, self.stride
        return nn.Conv2d(self.in_channels, self.out_channels, k, s, "same" if s == 1 else k // 2)


class CayleyConv2d(CircularOperatorConv):
    """Cayley convolution (Trockman & Kolter 2021, "Orthogonalizing convolutional layers
    with the Cayley transform", ICLR): per DFT frequency ``omega`` of the ``n1 x n2`` grid,
    ``y^(omega) = Cayley(alpha K^(omega) / ||K^||_F) x^(omega)``, an orthogonal (orthonormal-column)
    transfer matrix, so the circular convolution is orthogonal (norm 1). Stride ``s > 1``:
    on the ``s``-downsampled grid (``in s^2`` channels, their emulated striding)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, input_size: tuple[int, int], stride: int = 1
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, input_size, stride)
        self.weight = nn.Parameter(torch.empty(out_channels, self.inner_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.alpha = nn.Parameter(self._transfer().norm().detach().clone())

    def _transfer(self) -> Tensor:
        """``(frequencies, out, in)`` transfer matrices of the kernel centred at offset 0."""
        (n1, n2), k = self.grid, self.kernel_size
        m1, m2 = -(-k // n1) * n1, -(-k // n2) * n2  # multiples of the grid holding the kernel
        offset = self.weight.new_zeros(self.out_channels, self.inner_channels, m1, m2)
        offset[:, :, :k, :k] = self.weight
        offset = offset.roll(shifts=(-((k - 1) // 2), -((k - 1) // 2)), dims=(-2, -1))
        offset = offset.reshape(*offset.shape[:2], m1 // n1, n1, m2 // n2, n2).sum(dim=(2, 4))  # taps modulo n
        transfer = torch.fft.rfft2(offset)  # (out, in, n1, n2 // 2 + 1)
        return transfer.permute(2, 3, 0, 1).reshape(-1, self.out_channels, self.inner_channels)

    def linear(self, x: Tensor) -> Tensor:
        n1, n2 = self.grid
        transfer = self._transfer()
        orthogonal = cayley_transform(self.alpha * transfer / transfer.norm())
        spectrum = torch.fft.rfft2(x).permute(2, 3, 1, 0).reshape(-1, self.inner_channels, x.shape[0])
        out = (orthogonal @ spectrum.to(orthogonal.dtype)).reshape(n1, n2 // 2 + 1, self.out_channels, x.shape[0])
        return torch.fft.irfft2(out.permute(3, 2, 0, 1), s=(n1, n2))


def _circular_conv(x: Tensor, kernel: Tensor) -> Tensor:
    """Stride-1 cross-correlation with circular ``'same'`` padding (odd kernel)."""
    k1, k2 = kernel.shape[-2:]
    return F.conv2d(F.pad(x, (k2 // 2, k2 // 2, k1 // 2, k1 // 2), mode="circular"), kernel)


class SOCConv2d(CircularOperatorConv):
    """Skew orthogonal convolution (Singla & Feizi 2021, "Skew orthogonal convolutions", ICML).

    ``L = K - K^T`` (channels transposed, taps flipped: the adjoint of the circular
    convolution), divided by ``max(1, b)`` with ``b`` the Schur-test bound
    ``sqrt(max_i sum_j sum_(u,v) |(L^T * L)_ij[u, v]|) >= ||L||_2``; then the truncated
    exponential ``y = sum_(t <= terms) L^t x / t!`` (the paper's Taylor series of ``exp(L)``).
    ``L`` is skew with eigenvalues ``i theta``, ``|theta| <= 1``, and for
    ``terms mod 4 in (0, 3)`` the polynomial has ``|p(i theta)| <= 1`` there, so the layer is
    1-Lipschitz exactly and orthogonal up to ``1 / (terms + 1)!``. ``in != out``: the input
    is zero-padded to ``max(in, out)`` channels and the first ``out`` outputs are kept.
    Stride ``s > 1``: on the ``s``-downsampled grid (``in s^2`` channels; the paper's
    invertible downsampling).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        input_size: tuple[int, int],
        stride: int = 1,
        terms: int = 12,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, input_size, stride)
        if terms < 3 or terms % 4 not in (0, 3):
            raise ValueError(f"SOCConv2d: terms={terms} must be >= 3 with terms % 4 in (0, 3) (then |p(i theta)| <= 1)")
        self.terms = terms
        channels = max(self.inner_channels, out_channels)
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def skew_kernel(self) -> Tensor:
        """The normalised skew kernel ``L / max(1, b)``."""
        skew = self.weight - self.weight.transpose(0, 1).flip(-2, -1)
        bound = kernel_autocorrelation(skew).abs().sum(dim=(1, 2, 3)).max().sqrt()
        return skew / bound.clamp_min(1.0)

    def linear(self, x: Tensor) -> Tensor:
        skew = self.skew_kernel()
        if self.inner_channels < skew.shape[0]:
            x = F.pad(x, (0, 0, 0, 0, 0, skew.shape[0] - self.inner_channels))
        total, term = x, x
        for t in range(1, self.terms + 1):
            term = _circular_conv(term, skew) / t
            total = total + term
        return total[:, : self.out_channels]


class CayleyLinear(nn.Module):
    """Dense Cayley layer (Trockman & Kolter 2021): ``W = Cayley(alpha V / ||V||_F)``, orthonormal."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(nn.Linear(in_features, out_features).weight.detach().clone())
        self.alpha = nn.Parameter(self.weight.detach().norm().clone())
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def effective_weight(self) -> Tensor:
        return cayley_transform(self.alpha * self.weight / self.weight.norm())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def export_plain(self) -> nn.Linear:
        return _plain_linear(self, self.effective_weight())

    def unconstrained_twin(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)


class ExpSkewLinear(nn.Module):
    """Dense layer of the SOC family: ``W = exp(S - S^T)[:out, :in]`` (matrix exponential of
    a skew-symmetric ``max(in, out)`` square matrix, orthogonal; a block of it has norm <= 1)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        size = max(in_features, out_features)
        self.weight = nn.Parameter(torch.randn(size, size) / size)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def effective_weight(self) -> Tensor:
        return torch.linalg.matrix_exp(self.weight - self.weight.mT)[: self.out_features, : self.in_features]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def export_plain(self) -> nn.Linear:
        return _plain_linear(self, self.effective_weight())

    def unconstrained_twin(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)


@torch.no_grad()
def _plain_linear(layer: nn.Module, weight: Tensor) -> nn.Linear:
    plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    plain = plain.to(device=weight.device, dtype=weight.dtype)
    plain.weight.copy_(weight.detach())
    if layer.bias is not None:
        plain.bias.copy_(layer.bias.detach())
    return plain.eval()
