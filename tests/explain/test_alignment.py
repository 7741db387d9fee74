"""The gradient counterfactual and the alignment with minimal adversarial examples, on linear models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lipbench.explain.alignment import (
    adversarial_alignment,
    counterfactual_checks,
    gradient_counterfactuals,
    rounding_slack,
)
from lipbench.explain.saliency import margin_and_gradient, predicted_classes
from lipbench.nn.certificates import certified_radius


def linear(outputs: int, inputs: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(inputs, outputs)


def test_the_counterfactual_of_a_linear_binary_model_lands_on_the_boundary_at_the_certified_radius():
    model = linear(1, 5, 0)
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    margin, gradient, classes = margin_and_gradient(model, x)
    found = gradient_counterfactuals(model, x, classes, margin, gradient)
    w = model.weight.detach()[0]
    f = model(x).detach()[:, 0]
    assert found.flipped.all()
    assert found.distance.tolist() == pytest.approx((f.abs() / w.norm()).tolist(), rel=1e-5)
    assert model(found.points).detach().abs().max().item() < 1e-5  # on the boundary f = 0
    assert found.t.tolist() == pytest.approx((1 / w.norm() ** 2).expand(16).tolist(), rel=1e-5)
    radius = certified_radius(model(x).detach(), whole_map_lipschitz=w.norm().item())
    assert found.distance.tolist() == pytest.approx(radius.tolist(), rel=1e-5)
    assert counterfactual_checks(found.distance.double().numpy(), radius.double().numpy()).tolist() == []


def test_the_counterfactual_of_a_two_logit_linear_model_crosses_at_the_pairwise_radius():
    model = linear(2, 4, 2)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(3))
    margin, gradient, classes = margin_and_gradient(model, x)
    found = gradient_counterfactuals(model, x, classes, margin, gradient)
    w = model.weight.detach()
    assert found.flipped.all() and (predicted_classes(model(found.points)) != classes).all()
    assert found.distance.tolist() == pytest.approx((margin / (w[0] - w[1]).norm()).tolist(), rel=1e-5)


def test_a_multiclass_counterfactual_is_never_nearer_than_the_pairwise_certificate():
    model = linear(4, 6, 4)
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(5))
    margin, gradient, classes = margin_and_gradient(model, x)
    found = gradient_counterfactuals(model, x, classes, margin, gradient)
    w = model.weight.detach()
    pairwise = torch.cdist(w, w)
    logits = model(x).detach()
    radius = certified_radius(logits, pairwise=pairwise).double().numpy()
    slack = rounding_slack(logits.numpy(), gradient.norm(dim=1).double().numpy())
    assert found.flipped.all()
    assert counterfactual_checks(found.distance.double().numpy(), radius, slack).tolist() == []
    assert (slack < 1e-5).all()  # float32 rounding only


def test_a_counterfactual_nearer_than_the_radius_is_reported():
    distance = np.array([1.0, 0.5, np.inf, 2.0])
    radius = np.array([0.9, 0.6, 5.0, 2.0])
    assert counterfactual_checks(distance, radius).tolist() == [1]
    assert counterfactual_checks(distance, radius, slack=0.2).tolist() == []


def test_a_model_with_a_flat_margin_has_no_counterfactual():
    model = nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.fill_(1.0)
    x = torch.zeros(2, 3)
    margin, gradient, classes = margin_and_gradient(model, x)
    found = gradient_counterfactuals(model, x, classes, margin, gradient, bisection_steps=2)
    assert not found.flipped.any() and torch.isinf(found.distance).all() and torch.isnan(found.t).all()


def test_a_linear_gradient_is_aligned_with_the_minimal_adversarial_example():
    model = linear(1, 5, 6)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(7))
    _, gradient, _ = margin_and_gradient(model, x)
    w = model.weight.detach()[0]
    f = model(x).detach()[:, 0]
    x_adv = x - f[:, None] * w / w.norm() ** 2  # the minimal adversarial of a linear model
    x_adv[5] = torch.nan  # the attack found none there
    cosine = adversarial_alignment(gradient, x, x_adv)
    assert cosine[:5].tolist() == pytest.approx([1.0] * 5, abs=1e-6)
    assert torch.isnan(cosine[5])
    assert adversarial_alignment(gradient, x, x + f[:, None] * w)[:5].tolist() == pytest.approx([-1.0] * 5, abs=1e-6)


def test_a_linear_model_flips_just_past_the_linearised_boundary_and_its_ratio_is_one():
    """f(x) = w.x + b: x - u f(x) w / ‖w‖² lies on the boundary at u = 1 (flipped past it, not before),
    and |f| / ‖∇f‖ is the exact distance to the boundary, the minimal adversarial norm."""
    import numpy as np

    from lipbench.explain.alignment import flipped_at
    from lipbench.explain.figures import counterfactual_figures
    from lipbench.explain.saliency import margin_and_gradient

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1).double()
    x = torch.randn(40, 5, dtype=torch.float64)
    margin, gradient, classes = margin_and_gradient(model, x)
    past = flipped_at(model, x, classes, margin, gradient, 1.05)
    before = flipped_at(model, x, classes, margin, gradient, 0.95)
    assert past.tolist() == [1.0] * 40 and before.tolist() == [0.0] * 40
    distance = (margin.abs() / model.weight.norm()).detach().numpy()
    arrays = {
        "margin": margin.detach().numpy(),
        "gradient_norm": gradient.reshape(40, -1).norm(dim=1).detach().numpy(),
        "min_adversarial_norm": distance,
        "counterfactual_flipped_past_boundary": past.numpy(),
    }
    figures = counterfactual_figures(arrays)
    assert figures.flipped_past_boundary == 1.0 and figures.flipped_points == 40
    assert abs(figures.linearised_over_min_adversarial - 1.0) < 1e-12 and figures.ratio_points == 40
    arrays["min_adversarial_norm"] = np.where(np.arange(40) < 10, np.nan, 2 * distance)  # 10 points unbroken
    assert abs(counterfactual_figures(arrays).linearised_over_min_adversarial - 0.5) < 1e-12
    assert counterfactual_figures(arrays).ratio_points == 30


def test_the_step_is_undefined_where_the_gradient_vanishes():
    from lipbench.explain.alignment import flipped_at

    model = torch.nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.zero_()
    x = torch.randn(4, 3)
    result = flipped_at(model, x, torch.zeros(4, dtype=torch.long), model(x)[:, 0], torch.zeros(4, 3), 1.05)
    assert torch.isnan(result).all()
