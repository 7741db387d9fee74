"""Pooling layers: exact bounds for average pooling, strict ones for max pooling, refusals."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import lipbench.nn as lnn


def explicit_operator_norm(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Exact L2 operator norm of a linear module, from its explicit matrix (float64)."""
    size = int(torch.tensor(input_shape).prod())
    basis = torch.eye(size, dtype=torch.float64).reshape(size, *input_shape)
    with torch.no_grad():
        matrix = module.double()(basis).reshape(size, -1)
    return float(torch.linalg.matrix_norm(matrix, 2))


def upper_bound(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    return lnn.lipschitz_upper_bound(nn.Sequential(module), input_shape).whole_map


def pair_quotient_max(module: nn.Module, input_shape: tuple[int, ...], pairs: int = 64) -> float:
    """Largest ``||f(x) - f(y)|| / ||x - y||`` over random pairs, some of them close."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(pairs, *input_shape, dtype=torch.float64, generator=generator)
    step = torch.randn(pairs, *input_shape, dtype=torch.float64, generator=generator)
    step[pairs // 2 :] *= 1e-3
    with torch.no_grad():
        difference = (module(x + step) - module(x)).flatten(1)
    return float((torch.linalg.vector_norm(difference, dim=1) / torch.linalg.vector_norm(step.flatten(1), dim=1)).max())


def bump_quotient_max(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Largest ``||f(e_p) - f(0)||`` over single-pixel bumps ``e_p`` (a lower bound, exact for max pooling)."""
    size = int(torch.tensor(input_shape).prod())
    bumps = torch.eye(size, dtype=torch.float64).reshape(size, *input_shape)
    with torch.no_grad():
        difference = (module(bumps) - module(torch.zeros_like(bumps))).flatten(1)
    return float(torch.linalg.vector_norm(difference, dim=1).max())


AVG_OPTIONS = list(
    itertools.product(
        [2, 3],  # kernel
        [1, 2, 3],  # stride
        [0, 1],  # padding
        [False, True],  # ceil_mode
        [True, False],  # count_include_pad
        [None, 1, 3],  # divisor_override
    )
)
SIZES = [(3, 3), (5, 7), (8, 8), (6, 4)]


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode, count_include_pad, divisor_override", AVG_OPTIONS)
def test_avg_pool_bound_is_the_exact_operator_norm(kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    pool = nn.AvgPool2d(kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    for height, width in SIZES:
        shape = (2, height, width)
        bound = lnn.lipschitz_upper_bound(nn.Sequential(pool), shape)
        assert bound.layers[0].method == "exact (separable probe)"
        assert bound.whole_map == pytest.approx(explicit_operator_norm(pool, shape), rel=1e-9)


@pytest.mark.parametrize(
    "kernel, stride, padding, shape",
    [((2, 3), (1, 2), (1, 0), (1, 5, 7)), ((3, 2), (2, 1), (0, 1), (3, 7, 4)), ((3, 3), (3, 1), (1, 1), (1, 8, 5))],
)
@pytest.mark.parametrize(
    "ceil_mode, count_include_pad, divisor_override", [(False, True, None), (True, False, None), (True, True, 5)]
)
def test_avg_pool_bound_is_exact_for_rectangular_windows(
    kernel, stride, padding, shape, ceil_mode, count_include_pad, divisor_override
):
    pool = nn.AvgPool2d(kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    assert upper_bound(pool, shape) == pytest.approx(explicit_operator_norm(pool, shape), rel=1e-9)


def test_avg_pool_regressions_partial_windows_and_divisor_override():
    # ceil_mode: the last windows hold one row/column and divide by 1, not by 4
    assert upper_bound(nn.AvgPool2d(2, ceil_mode=True), (1, 3, 3)) == pytest.approx(1.0, rel=1e-9)
    assert explicit_operator_norm(nn.AvgPool2d(2, ceil_mode=True), (1, 3, 3)) == pytest.approx(1.0, rel=1e-9)
    # divisor 1: window sums, norm 2 for disjoint 2x2 windows
    assert upper_bound(nn.AvgPool2d(2, divisor_override=1), (1, 4, 4)) == pytest.approx(2.0, rel=1e-9)
    assert explicit_operator_norm(nn.AvgPool2d(2, divisor_override=1), (1, 4, 4)) == pytest.approx(2.0, rel=1e-9)


@pytest.mark.parametrize("output_size", [1, (2, 3), (3, None), (None, 2), (4, 4), (5, 9), (None, None)])
@pytest.mark.parametrize("size", [(5, 7), (8, 8), (3, 3), (7, 5)])
def test_adaptive_avg_pool_bound_is_the_exact_operator_norm(output_size, size):
    pool = nn.AdaptiveAvgPool2d(output_size)
    shape = (2, *size)
    assert upper_bound(pool, shape) == pytest.approx(explicit_operator_norm(pool, shape), rel=1e-9)


def test_adaptive_avg_pool_2x3_on_5x7_and_global_average():
    pool = nn.AdaptiveAvgPool2d((2, 3))
    assert upper_bound(pool, (3, 5, 7)) == pytest.approx(explicit_operator_norm(pool, (1, 5, 7)), rel=1e-9)
    assert upper_bound(nn.AdaptiveAvgPool2d(1), (4, 6, 6)) == pytest.approx(1 / 6, rel=1e-9)


def test_avg_pool_bound_on_a_large_input_is_the_product_of_the_two_line_norms():
    """128x128 (no materialised 16k x 4k matrix): the separable bound equals the product of the
    exact 1-D norms, each computed from its own explicit matrix."""
    pool = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    rows = explicit_operator_norm(nn.AvgPool2d((3, 1), (2, 1), (1, 0), ceil_mode=True, count_include_pad=False), (1, 128, 1))
    assert upper_bound(pool, (3, 128, 128)) == pytest.approx(rows * rows, rel=1e-9)


def test_a_non_separable_average_pooling_is_refused():
    class Symmetrised(nn.AvgPool2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x + 0.5 * x.transpose(-1, -2))

    with pytest.raises(ValueError, match=r"layer '0' \(Symmetrised.*not a separable"):
        upper_bound(Symmetrised(2), (1, 6, 6))


MAX_OPTIONS = list(itertools.product([2, 3], [1, 2, 3], [0, 1], [False, True]))


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", MAX_OPTIONS)
def test_max_pool_bound_is_above_every_pair_and_bump_quotient(kernel, stride, padding, ceil_mode):
    pool = nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)
    for height, width in SIZES:
        shape = (2, height, width)
        bound = upper_bound(pool, shape)
        assert bound >= pair_quotient_max(pool, shape) * (1 - 1e-9)
        # the Lipschitz constant of max pooling is sqrt(most windows holding one pixel), reached by a bump
        assert bound >= bump_quotient_max(pool, shape) * (1 - 1e-9)


@pytest.mark.parametrize(
    "pool, shape, expected",
    [
        (nn.MaxPool2d(3, stride=1), (1, 7, 7), 3.0),
        (nn.MaxPool2d(3, stride=1, padding=1), (2, 5, 5), 3.0),
        (nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (1, 8, 8), 2.0),
        (nn.MaxPool2d((2, 3), stride=(1, 2)), (1, 5, 7), 2.0),
        (nn.MaxPool2d(2), (1, 6, 6), 1.0),
    ],
)
def test_max_pool_bound_is_reached_by_a_bump(pool, shape, expected):
    assert upper_bound(pool, shape) == pytest.approx(expected, rel=1e-9)
    assert bump_quotient_max(pool, shape) == pytest.approx(expected, rel=1e-9)


def test_max_pool_bound_is_reached_by_a_bump_at_the_centre_of_7x7():
    pool = nn.MaxPool2d(3, stride=1)
    bump = torch.zeros(1, 1, 7, 7, dtype=torch.float64)
    bump[0, 0, 3, 3] = 0.25  # the maximum of the 9 windows that hold it
    quotient = float(torch.linalg.vector_norm(pool(bump) - pool(torch.zeros_like(bump)))) / 0.25
    assert quotient == pytest.approx(upper_bound(pool, (1, 7, 7)), rel=1e-9)
    assert quotient == pytest.approx(3.0, rel=1e-9)


@pytest.mark.parametrize("output_size", [1, (2, 3), (3, None), (4, 4), (5, 9), (None, None), (6, 2)])
@pytest.mark.parametrize("size", [(5, 7), (8, 8), (3, 3)])
def test_adaptive_max_pool_bound_is_the_exact_lipschitz_constant(output_size, size):
    pool = nn.AdaptiveMaxPool2d(output_size)
    shape = (2, *size)
    bound = upper_bound(pool, shape)
    assert bound == pytest.approx(bump_quotient_max(pool, shape), rel=1e-9)
    assert bound >= pair_quotient_max(pool, shape) * (1 - 1e-9)


@pytest.mark.parametrize("pool", [lnn.L2NormPool2d(2), lnn.L2NormPool2d((2, 3)), lnn.GlobalL2NormPool2d()])
@pytest.mark.parametrize("size", [(4, 6), (5, 7)])
def test_l2_norm_poolings_keep_bound_one(pool, size):
    shape = (2, *size)
    assert upper_bound(pool, shape) == 1.0
    assert pair_quotient_max(pool, shape) <= 1 + 1e-9
    assert bump_quotient_max(pool, shape) == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize(
    "pool, message",
    [
        (nn.LPPool2d(2, 2), r"layer '0' of type LPPool2d has no known bound; supported: .*AdaptiveMaxPool2d"),
        (nn.MaxPool2d(2, dilation=2), r"layer '0' \(MaxPool2d.*dilation 1"),
        (nn.MaxPool2d(2, return_indices=True), r"layer '0' \(MaxPool2d.*return_indices=False"),
        (nn.AdaptiveMaxPool2d(2, return_indices=True), r"layer '0' \(AdaptiveMaxPool2d.*without indices"),
        (nn.FractionalMaxPool2d(2, output_size=3), r"layer '0' of type FractionalMaxPool2d has no known bound"),
    ],
)
def test_unsupported_poolings_are_refused_naming_the_layer(pool, message):
    with pytest.raises(ValueError, match=message):
        upper_bound(pool, (1, 6, 6))
