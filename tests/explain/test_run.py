"""``explain_model`` and its summary on a linear binary model, where every value is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lipbench.arrays import AttackArrays, CertifyArrays
from lipbench.explain.run import explain_model, summarise
from lipbench.explain.settings import ExplainSettings
from lipbench.runs import RunKey
from lipbench.summaries import ExplainSummary


def _certificates(logits: torch.Tensor, radius: torch.Tensor) -> CertifyArrays:
    n = len(logits)
    return CertifyArrays(
        radius=radius.double().numpy(),
        correct=np.ones(n, bool),
        labels=(logits[:, 0] > 0).long().numpy(),
        predictions=(logits[:, 0] > 0).long().numpy(),
        logits=logits.numpy(),
        gradients=np.zeros((0, 3), np.float32),
        epsilons=np.array([0.1]),
        whole_map_lipschitz=np.asarray(1.0),
        per_logit_lipschitz=np.asarray([1.0]),
        certificate=np.zeros(n, np.int8),
    )


def _attacks(minimal: torch.Tensor, norms: torch.Tensor, examples: int) -> AttackArrays:
    n = len(norms)
    return AttackArrays(
        epsilons=np.array([0.1]),
        robust=np.zeros((1, n), bool),
        clean_correct=np.ones(n, bool),
        example_indices=np.arange(examples),
        attacks=["deepfool_l2"],
        success={"deepfool_l2": np.ones((1, n), bool)},
        examples={"deepfool_l2": minimal[:examples].numpy()},
        min_norms={"deepfool_l2": norms.double().numpy()},
    )


def test_a_linear_binary_model_is_explained_exactly():
    model = nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.6, -0.8, 0.0]]))  # unit norm: 1-Lipschitz
        model.bias.fill_(0.05)
    x = torch.rand(10, 3, generator=torch.Generator().manual_seed(0))
    logits = model(x).detach()
    w = model.weight.detach()[0]
    radius = logits[:, 0].abs()
    minimal = x - logits[:, :1] * w
    settings = ExplainSettings(points=8, deletion_steps=3, fidelity_subsets=8, sensitivity_samples=4, counterfactual_grid=4)
    arrays = explain_model(model, x, settings, _certificates(logits, radius), _attacks(minimal, radius, 6))
    assert arrays.margin.shape == (8,) and np.allclose(arrays.gradient_norm, 1.0)
    assert np.allclose(arrays.counterfactual_distance, radius[:8].numpy(), rtol=1e-5)
    summary = summarise(RunKey("moons", "linear", 0), "f" * 16, settings, arrays, binary=True)
    assert summary.margin == "binary_logit" and summary.points == 8
    assert summary.alignment == {"deepfool_l2": pytest.approx(1.0, abs=1e-6)} and summary.alignment_points == {"deepfool_l2": 6}
    assert summary.counterfactual_flipped == 8 and summary.counterfactual_violations == []
    assert summary.counterfactual_over_radius == pytest.approx(1.0, rel=1e-5)
    assert summary.counterfactual_over_min_adversarial == pytest.approx(1.0, rel=1e-5)
    assert summary.max_sensitivity == 0.0 and summary.gradient_norm == pytest.approx(1.0)
    shares = np.array([0.0, 3 / 7, 4 / 7])  # |w| / ‖w‖₁, ascending
    assert summary.sparseness == pytest.approx((2 * shares[2] + 0 * shares[1] - 2 * shares[0]) / 3, rel=1e-5)
    assert summary.complexity == pytest.approx(-(shares[1:] * np.log(shares[1:])).sum(), rel=1e-5)
    assert ExplainSummary.from_json(json.loads(json.dumps(summary.to_json()))) == summary
