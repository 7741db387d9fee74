"""Certified radii: the formulas, and that no attack beats them on a trained model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lipbench.nn as lnn
from lipbench.losses import hkr_multiclass_loss
from lipbench.nn.certificates import certified_accuracy, certified_radius, predictions


def test_binary_radius_is_abs_score_over_lipschitz():
    scores = torch.tensor([[0.5], [-2.0], [0.0]])
    torch.testing.assert_close(certified_radius(scores, whole_map_lipschitz=2.0), torch.tensor([0.25, 1.0, 0.0]))


def test_multiclass_radius_uses_the_better_of_the_two_valid_certificates():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.5, 0.4]])
    margins = torch.tensor([2.0, 0.1])
    torch.testing.assert_close(certified_radius(logits, whole_map_lipschitz=1.0), margins / math.sqrt(2))
    torch.testing.assert_close(certified_radius(logits, per_logit_lipschitz=1.0), margins / 2)
    # a per-row normalised output layer: every logit 1-Lipschitz, the whole map up to sqrt(3)
    both = certified_radius(logits, whole_map_lipschitz=math.sqrt(3), per_logit_lipschitz=1.0)
    torch.testing.assert_close(both, margins / 2)
    both = certified_radius(logits, whole_map_lipschitz=1.0, per_logit_lipschitz=1.0)
    torch.testing.assert_close(both, margins / math.sqrt(2))


def test_certified_accuracy_counts_correct_points_strictly_beyond_eps():
    radius = torch.tensor([0.5, 1.0, 2.0, 3.0])
    correct = torch.tensor([True, True, False, True])
    assert certified_accuracy(radius, correct, [0.0, 1.0, 2.5]) == {0.0: 0.75, 1.0: 0.25, 2.5: 0.25}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(), "needs whole_map_lipschitz"),
        (dict(whole_map_lipschitz=0.0), "finite positive"),
        (dict(per_logit_lipschitz=float("nan")), "finite positive"),
    ],
)
def test_bad_bounds_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        certified_radius(torch.zeros(2, 3), **kwargs)


def test_certified_accuracy_rejects_negative_eps():
    with pytest.raises(ValueError, match="epsilons"):
        certified_accuracy(torch.ones(2), torch.ones(2, dtype=torch.bool), [-0.1])


def pgd_inside_radius(model: nn.Module, x: torch.Tensor, radius: torch.Tensor, steps: int = 40) -> torch.Tensor:
    """L2 PGD that minimises the margin of the predicted class within 0.999 * radius."""
    with torch.no_grad():
        label = predictions(model(x))
    budget = (radius * 0.999).clamp_min(0)[:, None]
    delta = torch.randn_like(x).flatten(1)
    delta = delta / delta.norm(dim=1, keepdim=True) * budget
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = model(x + delta.reshape(x.shape))
        true = logits.gather(1, label[:, None])[:, 0]
        other = logits.scatter(1, label[:, None], float("-inf")).max(dim=1).values
        (gradient,) = torch.autograd.grad((true - other).sum(), delta)
        with torch.no_grad():
            step = gradient / gradient.norm(dim=1, keepdim=True).clamp_min(1e-12)
            delta = delta - 0.25 * budget * step
            delta = delta * torch.clamp(budget / delta.norm(dim=1, keepdim=True).clamp_min(1e-12), max=1.0)
    return (x + delta.reshape(x.shape)).detach()


def test_no_point_changes_class_under_pgd_below_its_certified_radius():
    torch.manual_seed(0)
    centers = torch.randn(4, 1, 8, 8)
    labels = torch.randint(0, 4, (512,))
    x = (centers[labels] + 0.6 * torch.randn(512, 1, 8, 8)).clamp(-3, 3)
    model = nn.Sequential(
        lnn.LipschitzConv2d(1, 8, 3),
        lnn.GroupSort2(),
        lnn.L2NormPool2d(2),
        nn.Flatten(),
        lnn.LipschitzLinear(8 * 16, 32),
        lnn.FullSort(),
        lnn.RowNormalizedLinear(32, 4),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(300):
        batch = torch.randint(0, 512, (64,))
        optimizer.zero_grad()
        hkr_multiclass_loss(model(x[batch]), labels[batch], alpha=50.0, margin=0.5).backward()
        optimizer.step()
    exported = lnn.export(model)
    bound = lnn.lipschitz_upper_bound(model, (1, 8, 8))
    with torch.no_grad():
        logits = exported(x[:128])
    radius = certified_radius(logits, bound.whole_map, bound.max_per_logit)
    assert float((predictions(logits) == labels[:128]).float().mean()) > 0.7, "the model should have learnt"
    assert float(radius.mean()) > 0.05, "certificates should be non-trivial"
    attacked = pgd_inside_radius(exported, x[:128], radius)
    with torch.no_grad():
        assert torch.equal(predictions(exported(attacked)), predictions(logits))
    # the attack did move the points up to (almost) the radius
    moved = (attacked - x[:128]).flatten(1).norm(dim=1)
    assert float((moved / radius.clamp_min(1e-9)).median()) > 0.9
