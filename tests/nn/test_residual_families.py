"""Residual layer families SLL and CPL (lipbench.nn.families.residual, lipbench.nn.residual_blocks):
export equals the eval-mode layer, the certificate checked on the exported tensors, empirical
1-Lipschitzness, a broken block falling back to a sound triangle bound, refusals, and the graph bound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipbench.nn import graph_lipschitz_upper_bound, lipschitz_upper_bound
from lipbench.nn.families import get_family
from lipbench.nn.families.residual import CPLConv2d, CPLLinear, SLLConv2d, SLLLinear
from lipbench.nn.residual_blocks import SAFETY_MARGIN, ResidualBlock, UnconstrainedResidual

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: torch on one thread for the module

DENSE_SHAPE = (12,)
CONV_SHAPE = (3, 6, 6)


def make_layer(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    builders = {
        "sll_dense": lambda: (SLLLinear(12, inner=16), DENSE_SHAPE),
        "cpl_dense": lambda: (CPLLinear(12), DENSE_SHAPE),
        "sll_conv": lambda: (SLLConv2d(3, 3, inner=5), CONV_SHAPE),
        "cpl_conv": lambda: (CPLConv2d(3, 3, input_size=CONV_SHAPE[1:]), CONV_SHAPE),
    }
    return builders[name]()


LAYERS = ["sll_dense", "cpl_dense", "sll_conv", "cpl_conv"]


def train_a_little(layer: nn.Module, shape: tuple[int, ...], steps: int = 8) -> nn.Module:
    """A few SGD steps on random data (training mode: CPL uses its power-iteration estimate)."""
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.train()
    for _ in range(steps):
        x = torch.randn(16, *shape, generator=generator)
        loss = (layer(x) - x.roll(1, dims=-1)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return layer.eval()


def pair_quotient_ascent(block: nn.Module, shape: tuple[int, ...], steps: int = 30) -> tuple[float, torch.Tensor]:
    """Max of ``||f(x) - f(y)|| / ||x - y||`` over random pairs, then improved by gradient ascent on the
    pairs; returns the max and the points of the best pairs (for the Jacobian search)."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(32, *shape, dtype=torch.float64, generator=generator)
    scales = torch.logspace(-3, 0, 32, dtype=torch.float64).reshape(-1, *[1] * len(shape))
    y = (x + scales * torch.randn(32, *shape, dtype=torch.float64, generator=generator)).requires_grad_(True)
    x.requires_grad_(True)
    optimizer = torch.optim.Adam([x, y], lr=0.02)
    best = 0.0
    for _ in range(steps):
        quotient = (block(x) - block(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
        best = max(best, float(quotient.detach().max()))
        optimizer.zero_grad()
        (-quotient.sum()).backward()
        optimizer.step()
    return best, torch.cat([x.detach(), y.detach()])


def jacobian_power_iteration(block: nn.Module, points: torch.Tensor, iterations: int = 25) -> float:
    """Max over ``points`` of ``||J(x)||`` by power iteration on ``J^T J`` (jvp then vjp, per sample)."""
    v = torch.randn(points.shape, dtype=points.dtype, generator=torch.Generator().manual_seed(3))
    norm = torch.zeros(len(points), dtype=points.dtype)
    for _ in range(iterations):
        v = v / v.flatten(1).norm(dim=1).reshape(-1, *[1] * (v.ndim - 1))
        _, jv = torch.func.jvp(block, (points,), (v,))
        _, vjp = torch.func.vjp(block, points)
        (v,) = vjp(jv)
        norm = jv.flatten(1).norm(dim=1)
    return float(norm.max())


def empirical_lipschitz(block: nn.Module, shape: tuple[int, ...]) -> float:
    """A lower bound of the block's Lipschitz constant (pairs, ascent, Jacobian power iteration), float64."""
    block = block.double().eval()
    quotient, points = pair_quotient_ascent(block, shape)
    return max(quotient, jacobian_power_iteration(block, points))


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("trained", [False, True])
def test_export_equals_eval_and_certificate_holds(name: str, trained: bool) -> None:
    layer, shape = make_layer(name)
    if trained:
        train_a_little(layer, shape)
    layer.eval()
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(4))
    block = layer.export_plain()
    assert isinstance(block, ResidualBlock) and not any(p.requires_grad for p in block.parameters())
    with torch.no_grad():
        torch.testing.assert_close(block(x), layer(x), rtol=1e-6, atol=1e-6)
    bound, method = block.lipschitz_bound(shape)
    value, _ = block.condition_value(shape)
    assert bound == 1.0 and value <= 1.0 and "checked" in method, method
    chain = lipschitz_upper_bound(nn.Sequential(layer, layer), shape)
    assert chain.whole_map <= 1.0 + 1e-4
    assert all("checked" in link.method for link in chain.layers)


@pytest.mark.parametrize("name", LAYERS)
def test_exported_block_is_empirically_1_lipschitz(name: str) -> None:
    layer, shape = make_layer(name)
    block = train_a_little(layer, shape).export_plain()
    assert empirical_lipschitz(block, shape) <= 1.0 + 1e-5


@pytest.mark.parametrize("name", ["sll_conv", "cpl_conv"])
def test_conv_condition_bounds_the_explicit_matrix(name: str) -> None:
    """The conv check (conv_bounds' grid norm) is >= the same quantity on the explicit matrix of the
    zero-padded convolution ``W^T`` at this input size, and the explicit condition holds too."""
    layer, shape = make_layer(name)
    block = train_a_little(layer, shape).export_plain().double()
    kernel = block.transform.weight * torch.sqrt(block.scale / 2).reshape(-1, 1, 1, 1)
    matrix = torch.func.jacrev(lambda x: torch.nn.functional.conv2d(x, kernel, padding=1).flatten())(
        torch.zeros(1, *shape, dtype=torch.float64)
    ).reshape(-1, torch.Size(shape).numel())
    explicit = float(torch.linalg.matrix_norm(matrix, 2)) ** 2
    value, _ = block.condition_value(shape)
    assert explicit <= value + 1e-12 and value <= 1.0


@pytest.mark.parametrize("name", ["cpl_dense", "cpl_conv"])
def test_cpl_export_uses_the_exact_norm(name: str) -> None:
    """CPL: ``(scale / 2) ||W||_exact^2 = 1 - margin`` up to float32 rounding of the stored scale."""
    layer, shape = make_layer(name)
    value, _ = train_a_little(layer, shape).export_plain().condition_value(shape)
    assert 1.0 - 2 * SAFETY_MARGIN <= value <= 1.0


@pytest.mark.parametrize("name", LAYERS)
def test_broken_block_falls_back_to_a_sound_triangle_bound(name: str) -> None:
    layer, shape = make_layer(name)
    block = layer.export_plain()
    slack, _ = block.condition_value(shape)
    # 1.5x past the critical scale: CPL sits at the condition's edge (1.5x W), SLL has Gershgorin slack.
    with torch.no_grad():
        block.transform.weight.mul_(1.5 / min(slack, 1.0) ** 0.5)
    value, _ = block.condition_value(shape)
    bound, method = block.lipschitz_bound(shape)
    assert value == pytest.approx(2.25, rel=1e-5)
    assert bound > 1.0 and "triangle" in method and "check failed" in method, method
    chain = lipschitz_upper_bound(nn.Sequential(block), shape)
    assert chain.whole_map == pytest.approx(bound)
    true_constant = empirical_lipschitz(block, shape)
    assert true_constant > 1.0 + 1e-3 or name.startswith("sll")  # CPL's Jacobian reaches 1 - 2 * 2.25
    assert bound >= true_constant


def test_sll_dense_matches_orthogonium_oracle() -> None:
    """Same weights in orthogonium's SDPBasedLipschitzDense (its weight is our W^T, its q our log q)."""
    from orthogonium.layers.conv.SLL.sll_layer import SDPBasedLipschitzDense

    layer, shape = make_layer("sll_dense")
    with torch.no_grad():
        layer.log_q.normal_()
    oracle = SDPBasedLipschitzDense(12, 12, inner_dim=16)
    with torch.no_grad():
        oracle.weight.copy_(layer.weight.mT)
        oracle.bias.copy_(layer.bias)
        oracle.q.copy_(layer.log_q)
    x = torch.randn(8, *shape)
    with torch.no_grad():
        torch.testing.assert_close(layer.eval()(x), oracle(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["sll", "cpl"])
def test_family_builders_and_refusals(family: str) -> None:
    chosen = get_family(family)
    assert chosen.residual and chosen.name == family
    dense, conv = chosen.dense(8, 8), chosen.conv(4, 4, 3, 1, (6, 6))
    assert dense(torch.randn(2, 8)).shape == (2, 8) and conv(torch.randn(2, 4, 6, 6)).shape == (2, 4, 6, 6)
    with pytest.raises(ValueError, match="out_features"):
        chosen.dense(8, 16)
    with pytest.raises(ValueError, match="out_channels"):
        chosen.conv(4, 8, 3, 1, (6, 6))
    with pytest.raises(ValueError, match="stride"):
        chosen.conv(4, 4, 3, 2, (6, 6))
    with pytest.raises(ValueError, match="kernel_size"):
        chosen.conv(4, 4, 2, 1, (6, 6))


@pytest.mark.parametrize("name", ["sll_dense", "cpl_conv"])
def test_unconstrained_twin(name: str) -> None:
    layer, shape = make_layer(name)
    twin = layer.unconstrained_twin()
    assert isinstance(twin, UnconstrainedResidual)
    x = torch.randn(2, *shape)
    assert twin(x).shape == x.shape
    assert all(p.requires_grad for p in twin.parameters())
    assert not {p.data_ptr() for p in twin.parameters()} & {p.data_ptr() for p in layer.parameters()}


class Skip(nn.Module):
    """``block(x) + x``: not a chain, bounded by the graph rule only."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + x


@pytest.mark.parametrize("name", ["sll_dense", "cpl_conv"])
def test_graph_bound_uses_the_block_certificate(name: str) -> None:
    layer, shape = make_layer(name)
    chain = nn.Sequential(layer, layer)
    graph = graph_lipschitz_upper_bound(chain, shape)
    assert graph.whole_map == pytest.approx(lipschitz_upper_bound(chain, shape).whole_map) == 1.0
    assert any("checked" in link.method for link in graph.layers)
    skip = graph_lipschitz_upper_bound(Skip(layer.export_plain()), shape)
    assert skip.whole_map == pytest.approx(2.0)
