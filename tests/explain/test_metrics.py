"""Each explanation metric on cases computable by hand (linear and quadratic models)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from lipbench.explain.faithfulness import curve_area, deletion_curves, feature_ranks, mu_fidelity
from lipbench.explain.saliency import class_margin, margin_and_gradient, replace_features, saliency_map, to_features
from lipbench.explain.stability import complexity, max_sensitivity, sparseness


def linear(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


class Quadratic(nn.Module):
    """``f(x) = ‖x‖² / 2 + 1``: its gradient is ``x`` (class 1 everywhere)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x.pow(2).sum(dim=1, keepdim=True) + 1.0


def test_the_margin_of_one_logit_is_signed_by_the_predicted_class_and_its_gradient_is_the_weight():
    model = linear([[1.0, -2.0, 0.5]], [0.1])
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # f = 1.1 (class 1), -1.9 (class 0)
    margin, gradient, classes = margin_and_gradient(model, x)
    assert classes.tolist() == [1, 0]
    assert margin.tolist() == pytest.approx([1.1, 1.9])
    assert torch.allclose(gradient, torch.tensor([[1.0, -2.0, 0.5], [-1.0, 2.0, -0.5]]))


def test_the_multiclass_margin_is_top_minus_runner_up_and_its_gradient_their_weight_difference():
    model = linear([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], [0.0, 0.0, 0.0])
    x = torch.tensor([[2.0, 1.0]])  # logits 2, 1, 1.5: top 0, runner-up 2
    margin, gradient, classes = margin_and_gradient(model, x)
    assert classes.tolist() == [0] and margin.item() == pytest.approx(0.5)
    assert gradient[0].tolist() == pytest.approx([0.5, -0.5])
    assert class_margin(model(x), torch.tensor([1])).item() == pytest.approx(-1.0)


def test_image_features_group_the_channels_of_a_pixel():
    x = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).reshape(2, 2, 3, 3)
    features = to_features(x)
    assert features.shape == (2, 9, 2) and features[0, 4].tolist() == [4.0, 13.0]
    replaced = torch.zeros(2, 9, dtype=torch.bool)
    replaced[0, 4] = True
    out = replace_features(x, replaced, -1.0)
    assert out[0, :, 1, 1].tolist() == [-1.0, -1.0] and (out[1] == x[1]).all()
    gradient = torch.zeros_like(x)
    gradient[0, 1, 2, 2] = -3.0
    assert saliency_map(gradient)[0, 8].item() == 3.0


def test_ranks_put_the_most_salient_first_and_break_ties_by_index():
    assert feature_ranks(torch.tensor([[0.1, 0.5, 0.5, 0.0]])).tolist() == [[2, 0, 1, 3]]


def test_deletion_and_insertion_of_a_linear_model_follow_the_weights():
    weight = [0.5, -2.0, 1.0, 0.25]
    model = linear([weight], [0.2])
    x = torch.tensor([[1.0, -1.0, 2.0, 4.0]])  # f = 0.5 + 2 + 2 + 1 + 0.2 = 5.7
    _, gradient, classes = margin_and_gradient(model, x)
    deletion = deletion_curves(model, x, classes, saliency_map(gradient), 0.0, steps=4)
    insertion = deletion_curves(model, x, classes, saliency_map(gradient), 0.0, steps=4, insertion=True)
    # order by |w|: features 1, 2, 0, 3 with contributions w_i x_i = 2, 2, 0.5, 1
    f = 5.7
    expected_deletion = [f, f - 2, f - 4, f - 4.5, f - 5.5]
    expected_insertion = [0.2, 2.2, 4.2, 4.7, 5.7]
    assert deletion[0].tolist() == pytest.approx([v / f for v in expected_deletion], rel=1e-5)
    assert insertion[0].tolist() == pytest.approx([v / f for v in expected_insertion], rel=1e-5)
    trapezoid = sum((a + b) / 2 for a, b in itertools.pairwise(expected_deletion)) / 4 / f
    assert curve_area(deletion).item() == pytest.approx(trapezoid, rel=1e-5)


def test_deletion_of_a_class_zero_point_scores_the_margin_of_class_zero():
    model = linear([[1.0, 1.0]], [0.0])
    x = torch.tensor([[-1.0, -3.0]])  # f = -4: class 0, margin 4
    _, gradient, classes = margin_and_gradient(model, x)
    curve = deletion_curves(model, x, classes, saliency_map(gradient), 0.0, steps=2)
    assert curve[0].tolist() == pytest.approx([1.0, 0.75, 0.0])  # ties: feature 0 (-1) deleted first


def test_mu_fidelity_of_a_linear_model_at_a_constant_offset_from_the_baseline_is_one():
    model = linear([[0.3, -1.0, 2.0, 0.7, -0.2, 1.5]], [0.0])
    x = torch.full((3, 6), 0.5)
    _, gradient, classes = margin_and_gradient(model, x)
    generator = torch.Generator().manual_seed(0)
    fidelity = mu_fidelity(model, x, classes, gradient, 0.0, subset_size=2, subsets=40, generator=generator)
    assert fidelity.tolist() == pytest.approx([1.0] * 3, abs=1e-5)
    reversed_map = mu_fidelity(model, x, classes, -gradient, 0.0, 2, 40, torch.Generator().manual_seed(0))
    assert reversed_map.tolist() == pytest.approx([-1.0] * 3, abs=1e-5)
    with pytest.raises(ValueError, match="subset_size"):
        mu_fidelity(model, x, classes, gradient, 0.0, 7, 4, generator)


def test_mu_fidelity_is_zero_when_the_attribution_or_the_margin_does_not_vary():
    model = linear([[0.0, 0.0, 1.0]], [0.0])
    x = torch.tensor([[1.0, 2.0, 3.0]])
    _, gradient, classes = margin_and_gradient(model, x)
    flat_map = mu_fidelity(model, x, classes, torch.zeros_like(x), 0.0, 1, 8, torch.Generator().manual_seed(0))
    assert flat_map.item() == 0.0
    ignored = linear([[0.0, 0.0, 0.0]], [1.0])  # the margin never changes
    assert mu_fidelity(ignored, x, classes, gradient + 1, 0.0, 1, 8, torch.Generator().manual_seed(0)).item() == 0.0


def test_max_sensitivity_of_a_linear_gradient_is_zero():
    model = linear([[1.0, -2.0, 3.0], [0.5, 0.5, 0.5]], [0.0, 0.1])
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    _, gradient, classes = margin_and_gradient(model, x)
    values = max_sensitivity(model, x, classes, gradient, 0.1, 8, torch.Generator().manual_seed(0))
    assert values.tolist() == [0.0] * 4


def test_max_sensitivity_of_a_quadratic_is_the_largest_noise_norm_over_the_gradient_norm():
    model = Quadratic()
    x = torch.tensor([[3.0, 4.0]])  # gradient x, norm 5
    _, gradient, classes = margin_and_gradient(model, x)
    values = max_sensitivity(model, x, classes, gradient, 0.1, 200, torch.Generator().manual_seed(0))
    bound = 0.1 * math.sqrt(2) / 5  # the corner of the L-inf ball
    assert 0.8 * bound < values.item() <= bound * (1 + 1e-5)


def test_complexity_is_largest_for_a_constant_map_and_zero_for_a_one_hot_map():
    maps = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, -2.0, 0.0, 0.0], [3.0, 0.0, -3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    values = complexity(maps)
    assert values[:3].tolist() == pytest.approx([math.log(4), 0.0, math.log(2)])
    assert math.isnan(values[3].item())
    random_map = torch.rand(5, 4, generator=torch.Generator().manual_seed(0))
    assert (complexity(random_map) <= math.log(4) + 1e-12).all()


def test_sparseness_is_the_gini_index():
    maps = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 5.0, 0.0], [0.0, 1.0, 0.0, -1.0]])
    assert sparseness(maps).tolist() == pytest.approx([0.0, 0.75, 0.5])
