"""Every registered layer family: 1-Lipschitz by construction, exported exactly, bounded
tightly, with an unconstrained twin, refusing unsupported options at build time.

Parametrized over ``list_families()``: a new family is tested by being registered.
Residual families (``family.residual``) are built with ``in == out`` and stride 1.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import lipbench.nn.families  # noqa: F401  (registers the built-in families)
from lipbench.nn import GroupSort2, export, lipschitz_upper_bound, unconstrained_twin
from lipbench.nn.conv_bounds import conv2d_geometry, conv2d_module_bound, conv2d_norm_plan
from lipbench.nn.families import get_family, list_families

FAMILIES = list_families()
SIZE = (8, 8)


def dense_chain(name: str) -> nn.Sequential:
    family = get_family(name)
    widths = (8, 8, 8) if family.residual else (8, 6, 4)
    return nn.Sequential(family.dense(widths[0], widths[1]), GroupSort2(), family.dense(widths[1], widths[2]))


def conv_chain(name: str) -> tuple[nn.Sequential, tuple[int, int, int]]:
    """``conv -> GroupSort2 -> conv`` (the second strided where the family supports it)."""
    family = get_family(name)
    channels = (4, 4, 4) if family.residual else (2, 4, 4)
    first = family.conv(channels[0], channels[1], 3, 1, SIZE)
    try:
        second = family.conv(channels[1], channels[2], 3, 2, SIZE)
    except ValueError:
        second = family.conv(channels[1], channels[2], 3, 1, SIZE)
    return nn.Sequential(first, GroupSort2(), second), (channels[0], *SIZE)


def models(name: str) -> list[tuple[nn.Sequential, tuple[int, ...]]]:
    torch.manual_seed(0)
    built = [(dense_chain(name), (8,))]
    if get_family(name).conv is not None:
        built.append(conv_chain(name))
    return built


def max_dense_singular_value(model: nn.Sequential) -> float:
    """Largest singular value of the exported chain's dense links (a residual family's
    inner weights live in a certified block, bounded as a whole by (b))."""
    links = [m for m in export(model) if isinstance(m, nn.Linear)]
    values = [torch.linalg.svdvals(m.weight.double()).max() for m in links]
    return float(max(values)) if values else 0.0


def assert_lipschitz(model: nn.Module, shape: tuple[int, ...]) -> None:
    assert max_dense_singular_value(model) <= 1 + 1e-6  # (a)
    bound = lipschitz_upper_bound(model, shape).whole_map
    assert bound <= 1 + 1e-4, bound  # (b)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_is_one_lipschitz_by_its_exported_weights(name):
    for model, shape in models(name):
        assert_lipschitz(model, shape)


@pytest.mark.parametrize("name", FAMILIES)
def test_export_equals_the_constrained_model_in_eval_mode(name):
    for model, shape in models(name):
        x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1))
        model.eval()
        with torch.no_grad():
            expected = model(x)
            actual = export(model)(x)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def power_iteration_norm(module: nn.Module, shape: tuple[int, ...], iterations: int = 30) -> float:
    """``||J||_2`` of the module's linear part, by power iteration on ``J^T J`` (autograd;
    float64 where the module runs in float64: orthogonium's normalisers are float32-only)."""
    double = copy.deepcopy(module).double().eval()
    try:
        with torch.no_grad():
            double(torch.zeros(1, *shape, dtype=torch.float64))
        module, dtype = double, torch.float64
    except RuntimeError:
        module, dtype = copy.deepcopy(module).eval(), torch.float32
    generator = torch.Generator().manual_seed(2)
    v = torch.randn(1, *shape, dtype=torch.float64, generator=generator).to(dtype)
    with parametrize.cached():
        offset = module(torch.zeros_like(v)).detach()
        for _ in range(iterations):
            v = (v / v.norm()).requires_grad_(True)
            y = module(v) - offset
            (gradient,) = torch.autograd.grad(0.5 * y.pow(2).sum(), v)
            v = gradient.detach()
        v = v / v.norm()
        with torch.no_grad():
            return float((module(v) - offset).norm())


def exported_convs(model: nn.Sequential, shape: tuple[int, ...]) -> list[tuple[nn.Module, nn.Conv2d, tuple[int, ...]]]:
    found, x = [], torch.zeros(1, *shape)
    with torch.no_grad():
        for module in model:
            plain = module.export_plain() if hasattr(module, "export_plain") else None
            if isinstance(plain, nn.Conv2d):
                found.append((module, plain, tuple(x.shape[1:])))
            x = module(x)
    return found


@pytest.mark.parametrize("name", [n for n in FAMILIES if get_family(n).conv is not None])
def test_exported_conv_bound_matches_the_operator_norm(name):
    model, shape = conv_chain(name)
    model.eval()
    convs = exported_convs(model, shape)
    assert convs or get_family(name).residual, "a non-residual family must export its convs to nn.Conv2d"
    for module, plain, input_shape in convs:
        bound, _ = conv2d_module_bound(plain, input_shape[-2:], name)
        estimate = power_iteration_norm(module, input_shape)
        assert bound >= estimate - 1e-6, (bound, estimate)
        exact = conv2d_norm_plan(conv2d_geometry(plain, input_shape[-2:], name)).exact
        if exact:  # circular padding: the bound is the norm
            assert bound <= estimate * (1 + 1e-4), (bound, estimate)
        assert estimate <= 1 + 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_unconstrained_twin_has_the_same_shapes_and_no_constraint(name):
    for model, shape in models(name):
        twin = unconstrained_twin(model)
        x = torch.randn(3, *shape)
        assert twin(x).shape == model(x).shape
        assert not any(parametrize.is_parametrized(m) for m in twin.modules())
        for module in twin.modules():
            if any(True for _ in module.parameters(recurse=False)):
                assert type(module) in (nn.Linear, nn.Conv2d), type(module)


@pytest.mark.parametrize("name", [n for n in FAMILIES if get_family(n).conv is not None])
def test_unsupported_conv_options_are_refused_at_build_time_by_name(name):
    family = get_family(name)
    with pytest.raises(ValueError, match="kernel_size"):
        family.conv(4, 4, (3, 2), 1, SIZE)
    try:
        family.conv(4, 4, 3, 2, SIZE)
    except ValueError as error:
        assert "stride" in str(error)


@pytest.mark.parametrize("name", [n for n in FAMILIES if get_family(n).residual])
def test_residual_family_refuses_a_width_change(name):
    with pytest.raises(ValueError):
        get_family(name).dense(4, 6)


@pytest.mark.parametrize("name", FAMILIES)
def test_one_sgd_step_keeps_the_layers_one_lipschitz(name):
    for model, shape in models(name):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(3))
        loss = model(x).pow(2).mean() - model(x).mean()
        loss.backward()
        optimizer.step()
        assert_lipschitz(model, shape)


REFUSALS = [
    ("bcop", (4, 4, 3, 2, SIZE), "stride"),
    ("aoc", (4, 4, 2, 2, SIZE), "stride"),
    ("aoc", (4, 4, 3, 2, (7, 7)), "input_size"),
    ("aoc", (4, 4, 5, 1, (1, 1)), "input_size"),
    ("soc", (4, 4, 2, 1, SIZE), "kernel_size"),
    ("soc", (4, 4, 3, 2, (7, 7)), "input_size"),
    ("cayley", (4, 4, 3, 2, (7, 7)), "input_size"),
    ("soc", (4, 4, 5, 2, (2, 2)), "kernel_size"),
    ("aol", (4, 4, 3, 0, SIZE), "stride"),
    ("bjorck", (4, 4, 3, 0, SIZE), "stride"),
]


@pytest.mark.parametrize(("name", "arguments", "option"), [r for r in REFUSALS if r[0] in FAMILIES])
def test_known_unsupported_options_name_the_option(name, arguments, option):
    with pytest.raises(ValueError, match=option):
        get_family(name).conv(*arguments)


@pytest.mark.parametrize("name", [n for n in ("cayley", "soc") if n in FAMILIES])
def test_circular_layers_refuse_another_input_size(name):
    layer = get_family(name).conv(2, 2, 3, 1, SIZE)
    with pytest.raises(ValueError, match="8x8"):
        layer(torch.randn(1, 2, 6, 6))


def test_aol_conv_scale_is_the_row_sum_of_the_operator_gram():
    """Theorem 2 of the AOL paper, checked on the unrolled zero-padded operator: at an
    interior pixel, ``sum_j |M^T M|_ij`` equals ``d_c`` from the kernel autocorrelation."""
    from lipbench.nn.families.aol import aol_conv_scale

    kernel = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    operator = torch.autograd.functional.jacobian(
        lambda x: nn.functional.conv2d(x, kernel, padding=1), torch.zeros(1, 3, 7, 7, dtype=torch.float64)
    ).reshape(4 * 49, 3 * 49)
    row_sums = (operator.T @ operator).abs().sum(dim=1).reshape(3, 7, 7)
    torch.testing.assert_close(row_sums[:, 3, 3], aol_conv_scale(kernel) ** -2)


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 3)])
@pytest.mark.parametrize("name", [n for n in ("aoc", "bcop", "cayley", "soc") if n in FAMILIES])
def test_circular_convs_on_inputs_smaller_than_the_kernel(name, size):
    """Circular padding wraps the kernel around a small grid; export and bound stay exact."""
    torch.manual_seed(5)
    layer = get_family(name).conv(2, 4, 3, 1, size).eval()
    x = torch.randn(3, 2, *size)
    plain = export(nn.Sequential(layer))
    with torch.no_grad():
        torch.testing.assert_close(plain(x), layer(x), rtol=1e-5, atol=1e-5)
    bound, _ = conv2d_module_bound(plain[0], size, name)
    estimate = power_iteration_norm(layer, (2, *size))
    assert estimate - 1e-6 <= bound <= min(estimate * (1 + 1e-4), 1 + 1e-4)
