"""Strict upper bounds and empirical lower bounds of a model's Lipschitz constant (L2).

Upper bounds are computed from the exported weights in float64, layer by layer, and
multiplied along the chain: exact spectral norms (SVD) for dense layers, for conv layers
the exact norm of the strided (polyphase) circular convolution: at the input size for
circular padding (exact), on a grid that embeds the zero-padded one without wrap-around
for zero padding (a bound; :mod:`lipbench.nn.conv_bounds`), 1 for GroupSort/FullSort/L2 pooling, the
exact norm of average pooling (separable per channel, probed in float64) and
``sqrt(windows per pixel)`` for max pooling.
Power iteration converges from below and is never used for a bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from lipbench.nn.conv_bounds import conv2d_module_bound, conv2d_operator_norm_bound
from lipbench.nn.export import check_finite, export
from lipbench.nn.layers import FullSort, GlobalL2NormPool2d, GroupSort, GroupSort2, L2NormPool2d

__all__ = [
    "CertifiedBlock",
    "LayerBound",
    "LipschitzUpperBound",
    "lipschitz_upper_bound",
    "conv2d_operator_norm_bound",
    "dense_operator_norm",
]


@dataclass(frozen=True)
class LayerBound:
    """One link of the chain: its name, type, input shape, bound and how it was obtained."""

    name: str
    layer_type: str
    input_shape: tuple[int, ...]
    bound: float
    method: str


@dataclass(frozen=True)
class LipschitzUpperBound:
    """Strict L2 Lipschitz upper bounds of a model's logit map.

    ``whole_map`` bounds ``||f(x) - f(y)|| / ||x - y||``; ``per_logit[i]`` bounds logit
    ``i`` alone (last dense layer's row norm times the rest of the chain), which a
    per-row-normalised output layer keeps at 1 while ``whole_map`` may reach
    ``sqrt(classes)``.

    When the chain ends in a dense layer ``W`` (rows ``w_i``): ``prefix`` is the strict
    bound ``L'`` of the chain before it, and ``pairwise[i][j]`` bounds the logit difference
    ``f_i - f_j = (w_i - w_j) . h(x) + b_i - b_j``: ``min(L' ||w_i - w_j||, sqrt(2) whole_map,
    per_logit[i] + per_logit[j])`` (each a valid bound, see
    :func:`lipbench.nn.certificates.certified_radius_and_kind`); ``None`` otherwise.
    """

    whole_map: float
    per_logit: tuple[float, ...]
    layers: tuple[LayerBound, ...] = field(repr=False)
    prefix: float | None = None
    pairwise: tuple[tuple[float, ...], ...] | None = field(default=None, repr=False)

    @property
    def max_per_logit(self) -> float:
        return max(self.per_logit)

    def as_dict(self) -> dict:
        return {
            "whole_map": self.whole_map,
            "per_logit": list(self.per_logit),
            "max_per_logit": self.max_per_logit,
            "prefix": self.prefix,
            "pairwise": None if self.pairwise is None else [list(row) for row in self.pairwise],
            "layers": [
                {"name": l.name, "type": l.layer_type, "input_shape": list(l.input_shape), "bound": l.bound, "method": l.method}
                for l in self.layers
            ],
        }


def dense_operator_norm(weight: Tensor) -> float:
    """Exact spectral norm (largest singular value, SVD in float64)."""
    return float(torch.linalg.matrix_norm(weight.detach().double(), ord=2))


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _overlap(kernel_size, stride) -> int:
    (k1, k2), (s1, s2) = _pair(kernel_size), _pair(stride if stride is not None else kernel_size)
    return math.ceil(k1 / s1) * math.ceil(k2 / s2)


_PROBE_ELEMENTS = 1 << 22  # float64 elements per probe batch (32 MiB)


def _line_probes(module: nn.Module, height: int, width: int, columns: bool) -> Tensor:
    """Single-channel outputs for the inputs with one row (``columns``: one column) of ones, stacked."""
    count = width if columns else height
    chunk = max(1, _PROBE_ELEMENTS // (height * width))
    outputs = []
    for start in range(0, count, chunk):
        lines = torch.arange(start, min(start + chunk, count))
        probes = torch.zeros(len(lines), 1, height, width, dtype=torch.float64)
        if columns:
            probes[torch.arange(len(lines)), 0, :, lines] = 1.0
        else:
            probes[torch.arange(len(lines)), 0, lines, :] = 1.0
        outputs.append(module(probes)[:, 0])
    return torch.cat(outputs)  # (count, out_h, out_w)


@torch.no_grad()
def _separable_pool_norm(name: str, module: nn.Module, input_size: tuple[int, int]) -> float:
    """Exact norm of a linear pooling that is ``A_h ⊗ A_w`` on each channel (avg, adaptive avg).

    PyTorch divides each window sum by ``d_h(i) d_w(j)`` (or a constant ``divisor_override``),
    so one channel maps ``X`` to ``A_h X A_w^T``. Probing the module in float64 with a row of
    ones gives ``A_h`` times ``(A_w 1)(j0)`` in output column ``j0``, a column of ones gives
    ``A_w`` times ``(A_h 1)(i0)`` in output row ``i0``, and the all-ones input gives the
    product of both factors at ``(i0, j0)``. The factorisation is then checked on a random
    two-channel input; a module that fails the check is refused, never guessed.
    """
    height, width = input_size
    ones = module(torch.ones(1, 1, height, width, dtype=torch.float64))[0, 0]
    i0, j0 = divmod(int(ones.abs().argmax()), ones.shape[-1])
    scale = float(ones[i0, j0])
    rows = _line_probes(module, height, width, columns=False)[:, :, j0].T  # (out_h, h)
    cols = _line_probes(module, height, width, columns=True)[:, i0, :].T  # (out_w, w)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, height, width, dtype=torch.float64, generator=generator)
    expected = rows @ x @ cols.T / scale if scale else torch.full((1,), math.nan)
    actual = module(x)
    error = float(torch.linalg.vector_norm(actual - expected)) if actual.shape == expected.shape else math.nan
    if not error <= 1e-9 * float(torch.linalg.vector_norm(expected)):
        raise ValueError(
            f"lipschitz_upper_bound: layer {name!r} ({module}) is not supported: it is not a separable "
            f"per-channel pooling on a {height}x{width} input, so its bound is unknown"
        )
    return dense_operator_norm(rows) * dense_operator_norm(cols) / abs(scale)


def _adaptive_windows_per_index(size: int, out: int) -> int:
    """Most adaptive windows ``[floor(o size/out), ceil((o+1) size/out))`` that hold one index."""
    counts = [0] * size
    for o in range(out):
        for index in range(o * size // out, -(-(o + 1) * size // out)):
            counts[index] += 1
    return max(counts)


def _adaptive_max_bound(name: str, module: nn.AdaptiveMaxPool2d, input_size: tuple[int, int]) -> tuple[float, str]:
    """``sqrt`` of the most windows holding one pixel (per-dimension product) of an adaptive max pool."""
    output_size = module.output_size
    output_size = (output_size, output_size) if output_size is None or isinstance(output_size, int) else output_size
    out = tuple(size if o is None else int(o) for o, size in zip(output_size, input_size, strict=True))
    with torch.no_grad():
        shape = None if module.return_indices else tuple(module(torch.zeros(1, 1, *input_size)).shape[-2:])
    if shape != out:
        raise ValueError(
            f"lipschitz_upper_bound: layer {name!r} ({module}) is not supported: expected an output of size "
            f"{out} without indices on a {input_size} input"
        )
    windows = math.prod(_adaptive_windows_per_index(size, o) for size, o in zip(input_size, out, strict=True))
    return math.sqrt(windows), f"sqrt({windows} adaptive windows per pixel)"


def _pool_bound(name: str, module: nn.Module, input_shape: tuple[int, ...]) -> tuple[float, str] | None:
    """Bound of a pooling layer, or ``None`` when ``module`` is not one of the supported poolings.

    Max pooling: each output moves by at most the largest change in its window, hence by at
    most the L2 change of the window, so ``sqrt(max windows holding one pixel)`` bounds it
    (``ceil(k/s)`` per dimension whatever the padding or ``ceil_mode``; padding is ``-inf``).
    """
    input_size = (int(input_shape[-2]), int(input_shape[-1])) if len(input_shape) >= 2 else None
    if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)) and input_size is not None:
        return _separable_pool_norm(name, module, input_size), "exact (separable probe)"
    if isinstance(module, nn.AdaptiveMaxPool2d) and input_size is not None:
        return _adaptive_max_bound(name, module, input_size)
    if isinstance(module, nn.MaxPool2d):
        if _pair(module.dilation) != (1, 1) or module.return_indices:
            raise ValueError(
                f"lipschitz_upper_bound: layer {name!r} ({module}) is not supported: max pooling needs "
                "dilation 1 and return_indices=False"
            )
        windows = _overlap(module.kernel_size, module.stride)
        return math.sqrt(windows), "sqrt(window overlap)"
    return None


@runtime_checkable
class CertifiedBlock(Protocol):
    """A module that certifies its own strict L2 Lipschitz bound (e.g. a residual block whose
    exported weights satisfy a checked condition): ``lipschitz_bound(input_shape)`` returns
    ``(bound, method)``, strict for inputs of ``input_shape`` (no batch dimension), computed
    from the module's current weights; the chain treats the block as one link."""

    def lipschitz_bound(self, input_shape: tuple[int, ...]) -> tuple[float, str]: ...


def _leaf_bound(name: str, module: nn.Module, input_shape: tuple[int, ...]) -> tuple[float, str]:
    """Bound and method for one leaf module acting on inputs of ``input_shape`` (no batch)."""
    if isinstance(module, CertifiedBlock):
        return module.lipschitz_bound(tuple(input_shape))
    if isinstance(module, nn.Linear):
        return dense_operator_norm(module.weight), "svd"
    if isinstance(module, nn.Conv2d):
        # Exact for circular padding at this input size, a strict bound for zero padding;
        # stride, groups and dilation included (lipbench.nn.conv_bounds, derivation there).
        what = f"lipschitz_upper_bound: layer {name!r} ({module}) is not supported"
        return conv2d_module_bound(module, (int(input_shape[-2]), int(input_shape[-1])), what)
    if isinstance(module, (GroupSort, GroupSort2, FullSort, GlobalL2NormPool2d)):
        return 1.0, "1 (norm preserving)"
    if isinstance(module, L2NormPool2d):
        return 1.0, "1 (disjoint windows)"
    if isinstance(module, (nn.ReLU, nn.Identity, nn.Flatten, nn.Dropout, nn.Unflatten)):
        return 1.0, "1"
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope)), "max(1, |slope|)"
    pooled = _pool_bound(name, module, input_shape)
    if pooled is not None:
        return pooled
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale = torch.rsqrt(module.running_var.double() + module.eps)
        if module.weight is not None:
            scale = scale * module.weight.detach().double()
        return float(scale.abs().max()), "max |gamma / sqrt(var + eps)| (eval mode)"
    raise ValueError(
        f"lipschitz_upper_bound: layer {name!r} of type {type(module).__name__} has no known bound; supported: "
        "Linear, Conv2d, GroupSort/GroupSort2/FullSort, L2NormPool2d, GlobalL2NormPool2d, ReLU, LeakyReLU, "
        "MaxPool2d (dilation 1), AvgPool2d, AdaptiveMaxPool2d, AdaptiveAvgPool2d, BatchNorm, Flatten, Unflatten, "
        "Dropout, Identity"
    )


def _chain(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The leaves of a (nested) ``nn.Sequential`` in order (a :class:`CertifiedBlock` is one
    leaf); other containers are refused."""
    if isinstance(module, CertifiedBlock):
        return [(prefix.rstrip("."), module)]
    if isinstance(module, nn.Sequential):
        leaves = []
        for name, child in module.named_children():
            leaves.extend(_chain(child, f"{prefix}{name}."))
        return leaves
    if any(True for _ in module.children()):
        raise ValueError(
            f"lipschitz_upper_bound: {prefix.rstrip('.') or 'model'} is a {type(module).__name__} with sub-modules; "
            "bounds multiply along a chain, so build models as (nested) nn.Sequential"
        )
    return [(prefix.rstrip("."), module)]


@torch.no_grad()
def lipschitz_upper_bound(model: nn.Module, input_shape: tuple[int, ...]) -> LipschitzUpperBound:
    """Strict upper bounds for ``model`` on inputs of ``input_shape`` (without batch dim).

    Constrained layers are exported first, so the bound is that of the weights an
    evaluation actually uses. Raises ``ValueError`` for non-finite weights or layers
    without a known bound.
    """
    plain = export(model)
    check_finite(plain, "lipschitz_upper_bound")
    leaves = _chain(plain)
    parameter = next(plain.parameters(), None)
    x = torch.zeros((1, *input_shape), dtype=parameter.dtype if parameter is not None else torch.float32)
    if parameter is not None:
        x = x.to(parameter.device)
    layer_bounds: list[LayerBound] = []
    for name, module in leaves:
        shape = tuple(x.shape[1:])
        bound, method = _leaf_bound(name, module, shape)
        if not math.isfinite(bound):
            raise ValueError(f"lipschitz_upper_bound: layer {name!r} gave a non-finite bound ({bound})")
        layer_bounds.append(LayerBound(name, type(module).__name__, shape, bound, method))
        x = module(x)
    whole_map = math.prod(layer.bound for layer in layer_bounds)
    outputs = x.shape[-1]
    last = leaves[-1][1] if leaves else None
    if not isinstance(last, nn.Linear):
        return LipschitzUpperBound(whole_map=whole_map, per_logit=(whole_map,) * outputs, layers=tuple(layer_bounds))
    prefix = math.prod(layer.bound for layer in layer_bounds[:-1])
    weight = last.weight.double()
    row_norms = torch.linalg.vector_norm(weight, dim=1)
    per_logit = tuple(min(float(norm) * prefix, whole_map) for norm in row_norms)
    # f_i - f_j = (w_i - w_j) . h + b_i - b_j is (prefix ||w_i - w_j||)-Lipschitz (exact row
    # differences, float64); the whole-map and per-logit bounds of the same difference cap it.
    pairwise = tuple(
        tuple(
            0.0 if i == j else min(prefix * distance, math.sqrt(2.0) * whole_map, per_logit[i] + per_logit[j])
            for j, distance in enumerate(torch.linalg.vector_norm(weight[i] - weight, dim=1).tolist())
        )
        for i in range(len(weight))
    )
    pairwise = pairwise if len(weight) > 1 else None  # one logit: no difference to bound
    return LipschitzUpperBound(whole_map, per_logit, tuple(layer_bounds), prefix=prefix, pairwise=pairwise)
