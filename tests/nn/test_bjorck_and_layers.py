"""Björck orthonormalisation, constrained layers, activations, pooling and export."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lipbench.nn as lnn
from lipbench.nn import functional as LF


def textbook_bjorck(weight: torch.Tensor, iterations: int = 15, beta: float = 0.5) -> torch.Tensor:
    for _ in range(iterations):
        weight = (1 + beta) * weight - beta * weight @ weight.mT @ weight
    return weight


@pytest.mark.parametrize("method", ["eigen", "gram"])
@pytest.mark.parametrize("shape", [(64, 300), (32, 144), (16, 9), (30, 100), (8, 8)])
@pytest.mark.parametrize("kind", ["random", "orthogonal", "low_rank"])
def test_bjorck_equals_the_textbook_iteration_in_value_and_gradient(method, shape, kind):
    generator = torch.Generator().manual_seed(hash((shape, kind)) % 2**31)
    weight = torch.randn(*shape, dtype=torch.float64, generator=generator)
    if kind == "orthogonal":
        nn.init.orthogonal_(weight)
    elif kind == "low_rank":
        weight = weight[:, :3] @ torch.randn(3, shape[1], dtype=torch.float64, generator=generator)
    weight = (weight / torch.linalg.matrix_norm(weight, 2)).requires_grad_(True)
    ours = LF.bjorck_orthonormalize(weight, method=method)
    reference = textbook_bjorck(weight)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
    upstream = torch.randn(ours.shape, dtype=torch.float64, generator=generator)
    (grad_ours,) = torch.autograd.grad(ours, weight, upstream)
    (grad_reference,) = torch.autograd.grad(reference, weight, upstream)
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-7, atol=1e-7 * float(grad_reference.abs().max()))


def test_bjorck_rejects_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        LF.bjorck_orthonormalize(torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="iterations"):
        LF.bjorck_orthonormalize(torch.eye(2), iterations=-1)
    with pytest.raises(ValueError, match="method"):
        LF.bjorck_orthonormalize(torch.eye(2), method="svd")


def constrained_layers() -> list[nn.Module]:
    return [
        lnn.LipschitzLinear(20, 7),
        lnn.LipschitzLinear(7, 20),
        lnn.LipschitzLinear(1568, 64),
        lnn.LipschitzConv2d(1, 16, 3),
        lnn.LipschitzConv2d(16, 32, 3),
        lnn.LipschitzConv2d(8, 8, 5),
        lnn.LipschitzConv2d(4, 6, 3, stride=2, padding=1),
        lnn.LipschitzConv2d(3, 8, (3, 1)),
    ]


def orthonormalised_matrix(layer: nn.Module) -> torch.Tensor:
    """The reshaped effective weight, with the conv correction factor divided out."""
    weight = layer.weight.detach()
    factor = getattr(layer, "correction_factor", 1.0)
    return weight.reshape(weight.shape[0], -1) / factor


@pytest.mark.parametrize("layer_index", range(len(constrained_layers())))
def test_singular_values_after_bjorck_are_one_at_init_and_after_training(layer_index):
    torch.manual_seed(layer_index)
    layer = constrained_layers()[layer_index]
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    in_shape = (8, layer.in_features) if isinstance(layer, nn.Linear) else (8, layer.in_channels, 12, 12)
    for step in range(31):
        if step in (0, 30):
            layer.eval()
            singular_values = torch.linalg.svdvals(orthonormalised_matrix(layer))
            assert float(singular_values.min()) >= 1 - 1e-3
            assert float(singular_values.max()) <= 1 + 1e-3
            layer.train()
        optimizer.zero_grad()
        layer(torch.randn(in_shape)).square().mean().backward()
        optimizer.step()


def test_row_normalized_linear_rows_have_unit_norm():
    layer = lnn.RowNormalizedLinear(64, 10)
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(torch.linspace(0.1, 5, 10)[:, None])
    torch.testing.assert_close(torch.linalg.vector_norm(layer.weight, dim=1), torch.ones(10))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(stride=2, padding="same"), "padding='same' needs stride 1"),
        (dict(correction="lambda"), "needs input_size"),
        (dict(correction="exact"), "needs input_size"),
        (dict(correction="paper"), "correction must be"),
        (dict(padding_mode="reflect"), "padding_mode must be"),
        (dict(stride=0), "must be >= 1"),
    ],
)
def test_conv_rejects_unsupported_configurations_naming_the_layer(kwargs, message):
    with pytest.raises(ValueError, match="LipschitzConv2d") as error:
        lnn.LipschitzConv2d(3, 4, 3, **kwargs)
    assert message in str(error.value)


def test_conv_correction_factors():
    assert lnn.LipschitzConv2d(1, 4, 3).correction_factor == pytest.approx(1 / 3)
    assert lnn.LipschitzConv2d(1, 4, 3, stride=2, padding=1).correction_factor == pytest.approx(1 / 2)
    assert lnn.LipschitzConv2d(1, 4, (3, 1)).correction_factor == pytest.approx(1 / math.sqrt(3))
    lam = lnn.LipschitzConv2d(1, 4, 3, correction="lambda", input_size=(28, 28)).correction_factor
    assert lam == pytest.approx(28 / 82)


@pytest.mark.parametrize(
    "activation, shape",
    [
        (lnn.GroupSort2(), (16, 8, 5, 5)),
        (lnn.GroupSort2(), (16, 10)),
        (lnn.GroupSort(4), (16, 12, 3, 3)),
        (lnn.FullSort(), (16, 10)),
    ],
)
def test_sorting_activations_preserve_gradient_norms_and_are_1_lipschitz(activation, shape):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    output = activation(x)
    upstream = torch.randn(output.shape)
    (gradient,) = torch.autograd.grad(output, x, upstream)
    # The Jacobian is a permutation in every sample: it preserves the norm of any vector.
    torch.testing.assert_close(
        torch.linalg.vector_norm(gradient.flatten(1), dim=1), torch.linalg.vector_norm(upstream.flatten(1), dim=1)
    )
    with torch.no_grad():
        y = torch.randn(shape)
        distance_out = torch.linalg.vector_norm((activation(x) - activation(y)).flatten(1), dim=1)
        distance_in = torch.linalg.vector_norm((x - y).flatten(1), dim=1)
    assert bool((distance_out <= distance_in * (1 + 1e-6)).all())
    # Outputs are the sorted inputs of each group: same multiset of values.
    torch.testing.assert_close(output.detach().flatten(1).sort(1).values, x.detach().flatten(1).sort(1).values)


def test_group_sort_2_gradients_match_autograd_through_min_max():
    x = torch.randn(3, 6, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(LF.group_sort_2, (x,))
    assert torch.autograd.gradgradcheck(LF.group_sort_2, (x,))


@pytest.mark.parametrize("shape", [(3, 4, 6, 6), (2, 3, 7, 9)])
def test_l2_norm_pooling_preserves_window_norms_and_has_correct_gradients(shape):
    x = (torch.rand(shape, dtype=torch.float64) + 0.1).requires_grad_(True)
    pooled = LF.l2_norm_pool2d(x, 2)
    covered = x[..., : pooled.shape[-2] * 2, : pooled.shape[-1] * 2]
    torch.testing.assert_close(
        torch.linalg.vector_norm(pooled.flatten(1), dim=1), torch.linalg.vector_norm(covered.flatten(1), dim=1)
    )
    assert torch.autograd.gradcheck(lambda t: LF.l2_norm_pool2d(t, 2), (x,))
    assert torch.autograd.gradgradcheck(lambda t: LF.l2_norm_pool2d(t, 2), (x,))


def test_l2_norm_pooling_gradient_is_zero_on_zero_windows():
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)
    (gradient,) = torch.autograd.grad(LF.l2_norm_pool2d(x, 2).sum(), x)
    assert torch.equal(gradient, torch.zeros_like(x))


def test_global_l2_norm_pool():
    x = torch.randn(5, 3, 4, 4)
    torch.testing.assert_close(lnn.GlobalL2NormPool2d()(x), x.flatten(2).norm(dim=2))


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        lnn.LipschitzConv2d(1, 8, 3),
        lnn.GroupSort2(),
        lnn.L2NormPool2d(2),
        lnn.LipschitzConv2d(8, 16, 3),
        lnn.GroupSort2(),
        lnn.L2NormPool2d(2),
        nn.Flatten(),
        lnn.LipschitzLinear(16 * 4 * 4, 32),
        lnn.FullSort(),
        lnn.RowNormalizedLinear(32, 10),
    )


def test_export_equals_the_eval_model_right_after_an_optimizer_step():
    torch.manual_seed(0)
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.rand(32, 1, 16, 16)
    for _ in range(3):
        model.train()
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()  # the last training forward saw the weights before this step
    exported = lnn.export(model)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), rtol=0, atol=1e-6)
    kinds = {type(module) for module in exported.modules()}
    assert nn.Conv2d in kinds and nn.Linear in kinds
    assert not any(hasattr(module, "parametrizations") for module in exported.modules())
    assert not any(parameter.requires_grad for parameter in exported.parameters())


def test_export_of_a_training_model_neither_updates_its_state_nor_differs_from_eval():
    torch.manual_seed(1)
    model = small_cnn().train()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    exported = lnn.export(model)
    assert model.training, "export must restore the training flag"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), f"export changed {name}"
    model.eval()
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), rtol=0, atol=1e-6)


def test_export_does_not_share_storage_with_the_model():
    model = small_cnn()
    exported = lnn.export(model)
    with torch.no_grad():
        for parameter in exported.parameters():
            parameter.add_(1.0)
    assert not torch.equal(lnn.export(model)[0].bias, exported[0].bias)


def test_export_refuses_non_finite_weights_naming_the_parameter():
    model = small_cnn()
    with torch.no_grad():
        model[3].bias[0] = float("nan")
    with pytest.raises(ValueError, match=r"3\.bias.*non-finite"):
        lnn.export(model)


def test_unconstrained_twin_replaces_every_block():
    twin = lnn.unconstrained_twin(small_cnn())
    kinds = [type(module) for module in twin]
    assert kinds == [
        nn.Conv2d,
        nn.ReLU,
        nn.MaxPool2d,
        nn.Conv2d,
        nn.ReLU,
        nn.MaxPool2d,
        nn.Flatten,
        nn.Linear,
        nn.ReLU,
        nn.Linear,
    ]
    assert type(lnn.unconstrained_twin(small_cnn(), pooling="avg")[2]) is nn.AvgPool2d
    assert twin(torch.rand(2, 1, 16, 16)).shape == (2, 10)
