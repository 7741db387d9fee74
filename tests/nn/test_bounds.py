"""Strict upper bounds and empirical lower bounds of the Lipschitz constant."""

from __future__ import annotations

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


@pytest.mark.parametrize(
    "in_channels, out_channels, kernel, stride, padding, size, tolerance",
    [
        (1, 1, 3, 1, 1, 8, 0.15),
        (2, 3, 3, 1, 1, 16, 0.05),
        (4, 4, 5, 1, 2, 16, 0.10),
        (3, 2, 3, 1, 0, 12, 0.10),
        (1, 1, 3, 1, 1, 28, 0.02),
        (2, 3, 3, 2, 1, 10, 0.10),  # strided: the polyphase bound is tight too
        (2, 3, 3, 2, 1, 16, 0.05),
        (3, 4, 4, 2, 1, 12, 0.08),
    ],
)
def test_conv_bound_is_above_the_exact_zero_padded_norm_and_close_to_it(
    in_channels, out_channels, kernel, stride, padding, size, tolerance
):
    torch.manual_seed(size * 10 + kernel)
    for _ in range(3):
        conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False)
        exact = explicit_operator_norm(conv, (in_channels, size, size))
        bound = lnn.lipschitz_upper_bound(nn.Sequential(conv), (in_channels, size, size)).whole_map
        assert bound >= exact * (1 - 1e-9)
        assert bound <= exact * (1 + tolerance)


def test_lambda_option_exceeds_one_on_a_worst_case_kernel_which_is_why_strict_is_the_default():
    layers = {
        correction: lnn.LipschitzConv2d(1, 1, 3, bias=False, correction=correction, input_size=(28, 28))
        for correction in ("lambda", "strict")
    }
    norms = {}
    for correction, layer in layers.items():
        with torch.no_grad():
            layer.parametrizations.weight.original.fill_(1.0)  # constant 3x3 kernel
        exported = lnn.export(layer)
        torch.testing.assert_close(exported.weight.abs(), torch.full((1, 1, 3, 3), layer.correction_factor / 3))
        norms[correction] = explicit_operator_norm(exported, (1, 28, 28))
        upper = lnn.lipschitz_upper_bound(nn.Sequential(layer), (1, 28, 28)).whole_map
        assert upper >= norms[correction] * (1 - 1e-9), "the strict upper bound must catch it"
    assert norms["lambda"] == pytest.approx(1.016, abs=1e-3)
    assert norms["lambda"] > 1.0
    assert norms["strict"] <= 1.0


def constrained_network(last: str, stride: int = 1) -> nn.Sequential:
    output = lnn.RowNormalizedLinear(32, 10) if last == "row" else lnn.LipschitzLinear(32, 10)
    return nn.Sequential(
        lnn.LipschitzConv2d(1, 8, 3),
        lnn.GroupSort2(),
        lnn.L2NormPool2d(2),
        lnn.LipschitzConv2d(8, 16, 3, stride=stride, padding=1),
        lnn.GroupSort2(),
        lnn.GlobalL2NormPool2d(),
        lnn.LipschitzLinear(16, 32),
        lnn.FullSort(),
        output,
    )


def train_briefly(model: nn.Module, steps: int = 20) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-2)
    x, y = torch.rand(32, 1, 12, 12), torch.randint(0, 10, (32,))
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x) * 10, y).backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("stride", [1, 2])
def test_strict_constrained_networks_are_certified_1_lipschitz_after_training(stride):
    torch.manual_seed(stride)
    row = train_briefly(constrained_network("row", stride))
    bound = lnn.lipschitz_upper_bound(row, (1, 12, 12))
    assert max(bound.per_logit) <= 1 + 1e-4
    assert bound.whole_map <= 10**0.5 * (1 + 1e-4)
    orthonormal = train_briefly(constrained_network("orthonormal", stride))
    assert lnn.lipschitz_upper_bound(orthonormal, (1, 12, 12)).whole_map <= 1 + 1e-4


def random_models() -> list[tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    batch_norm = nn.BatchNorm2d(6)
    batch_norm.running_var.uniform_(0.5, 2.0)
    batch_norm.running_mean.normal_()
    return [
        (constrained_network("row"), (1, 12, 12)),
        (constrained_network("orthonormal", stride=2), (1, 12, 12)),
        (
            nn.Sequential(
                lnn.LipschitzLinear(2, 16),
                lnn.FullSort(),
                lnn.LipschitzLinear(16, 16),
                lnn.GroupSort(4),
                lnn.LipschitzLinear(16, 1),
            ),
            (2,),
        ),
        (
            nn.Sequential(
                nn.Conv2d(1, 6, 3, padding=1),
                batch_norm,
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(6, 4, 3, stride=2, padding=1),
                nn.LeakyReLU(0.1),
                nn.AvgPool2d(2),
                nn.Flatten(),
                nn.Linear(4 * 2 * 2, 5),
            ),
            (1, 16, 16),
        ),
        (
            nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 3)),
            (3, 10, 10),
        ),
        (
            nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 4)),
            (2, 8, 8),
        ),
    ]


@pytest.mark.parametrize("index", range(len(random_models())))
def test_lower_bound_never_exceeds_upper_bound(index):
    model, input_shape = random_models()[index]
    model.eval()
    upper = lnn.lipschitz_upper_bound(model, input_shape)
    lower = lnn.lipschitz_lower_bound(lnn.export(model), torch.rand(16, *input_shape), ascent_steps=5)
    assert 0 < lower.whole_map <= upper.whole_map * (1 + 1e-4)
    for lower_logit, upper_logit in zip(lower.per_logit, upper.per_logit, strict=True):
        assert lower_logit <= upper_logit * (1 + 1e-4)
    assert lower.logit_difference <= 2 * max(upper.per_logit) * (1 + 1e-4)
    # every layer's bound is recorded with the shape it acts on
    assert len(upper.layers) == sum(1 for m in model.modules() if not list(m.children()))


def test_lower_bound_is_tight_for_a_gradient_norm_preserving_network():
    torch.manual_seed(3)
    model = nn.Sequential(
        lnn.LipschitzLinear(8, 8), lnn.FullSort(), lnn.LipschitzLinear(8, 8), lnn.GroupSort2(), lnn.LipschitzLinear(8, 1)
    )
    exported = lnn.export(model)
    lower = lnn.lipschitz_lower_bound(exported, torch.randn(32, 8), ascent_steps=0)
    upper = lnn.lipschitz_upper_bound(model, (8,))
    # square orthonormal layers and sorting activations: the gradient norm is 1 everywhere
    assert lower.whole_map == pytest.approx(1.0, abs=1e-5)
    assert upper.whole_map == pytest.approx(1.0, abs=1e-5)


def test_gradient_norm_ascent_raises_the_gradient_norm_on_smooth_parts():
    from lipbench.nn.lower_bound import _gradient_norm_ascent

    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), lnn.L2NormPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.rand(8, 1, 8, 8)
    direction = torch.tensor([1.0, -1.0, 0.0]).repeat(8, 1) / 2**0.5
    start = torch.linalg.vector_norm(lnn.input_jacobian(model, x).transpose(1, 2) @ direction[:, :, None], dim=(1, 2))
    generator = torch.Generator().manual_seed(0)
    ascended = _gradient_norm_ascent(model, x, direction, 20, 0.05, 0.0, generator)
    assert bool((ascended >= start * (1 - 1e-6)).all())
    assert float(ascended.mean()) > float(start.mean()) * 1.01
    lower = lnn.lipschitz_lower_bound(model, x, ascent_steps=20)
    assert lower.whole_map <= lnn.lipschitz_upper_bound(model, (1, 8, 8)).whole_map


def test_pair_quotients_are_lower_bounds():
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3, 4) * 2)  # operator norm 2
    x = torch.randn(5, 4)
    whole, per_logit = lnn.pair_quotients(model, x, x + torch.randn(5, 4))
    assert bool((whole <= 2 + 1e-5).all()) and bool((per_logit <= 2 + 1e-5).all())
    whole, _ = lnn.pair_quotients(model, x, x)
    assert torch.equal(whole, torch.zeros(5))


def test_bounds_reject_non_finite_weights_and_unknown_layers():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="'1' of type Tanh has no known bound"):
        lnn.lipschitz_upper_bound(model, (3,))
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="0.weight holds non-finite"):
        lnn.lipschitz_upper_bound(model, (3,))


def test_bounds_refuse_models_that_are_not_chains():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.inner(x)

    with pytest.raises(ValueError, match="nn.Sequential"):
        lnn.lipschitz_upper_bound(nn.Sequential(Residual()), (3,))
    with pytest.raises(ValueError, match="layer '0' .* padding_mode='reflect'"):
        lnn.lipschitz_upper_bound(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")), (4, 6, 6))


def test_a_certified_block_is_one_link_of_the_chain_with_its_own_bound():
    class Residual(nn.Module):
        """x + 0.5 * tanh(W x): Lipschitz <= 1 + 0.5 ||W||, which it certifies itself."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(4, 4, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 0.5 * torch.tanh(self.inner(x))

        def lipschitz_bound(self, input_shape: tuple[int, ...]) -> tuple[float, str]:
            return 1 + 0.5 * lnn.dense_operator_norm(self.inner.weight), "triangle"

    torch.manual_seed(0)
    block, head = Residual(), nn.Linear(4, 2)
    bound = lnn.lipschitz_upper_bound(nn.Sequential(block, head), (4,))
    assert isinstance(block, lnn.CertifiedBlock) and [layer.layer_type for layer in bound.layers] == ["Residual", "Linear"]
    expected = (1 + 0.5 * lnn.dense_operator_norm(block.inner.weight)) * lnn.dense_operator_norm(head.weight)
    assert bound.whole_map == pytest.approx(expected) and bound.layers[0].method == "triangle"
    with pytest.raises(ValueError, match="with sub-modules"):  # without the certificate: refused
        lnn.lipschitz_upper_bound(nn.Sequential(nn.Sequential(head), nn.ModuleList([head])), (4,))
