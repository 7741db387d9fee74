"""lipbench's saliency and max-sensitivity against captum's definitions (a maintained library, as test oracle).

captum (``captum.attr.Saliency``, ``captum.metrics.sensitivity_max``, Yeh et al. 2019) is computed on the
same model, points and noise draws; lipbench's own torch code (one batched pass, the decision margin of
Serrurier et al. 2023) must give the same numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipbench.explain.saliency import margin_and_gradient
from lipbench.explain.stability import max_sensitivity

captum_attr = pytest.importorskip("captum.attr")
captum_metrics = pytest.importorskip("captum.metrics")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4)).double().eval()


class _Margin(nn.Module):
    """``f_class - max_{j != class} f_j``: the margin whose gradient lipbench explains."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        top = logits.gather(1, classes[:, None])[:, 0]
        others = logits.scatter(1, classes[:, None], -torch.inf)
        return (top - others.amax(dim=1))[:, None]


def test_the_saliency_map_is_captums_saliency_of_the_margin():
    model, x = _model(), torch.rand(10, 1, 4, 4, dtype=torch.float64)
    _, gradient, classes = margin_and_gradient(model, x)
    saliency = captum_attr.Saliency(_Margin(model)).attribute(x, target=0, abs=False, additional_forward_args=(classes,))
    torch.testing.assert_close(gradient, saliency, rtol=1e-10, atol=1e-12)


def test_max_sensitivity_is_captums_sensitivity_max_on_the_same_noise():
    model, x = _model(), torch.rand(6, 1, 4, 4, dtype=torch.float64)
    _, gradient, classes = margin_and_gradient(model, x)
    radius, samples = 0.05, 8
    ours = max_sensitivity(model, x, classes, gradient, radius, samples, torch.Generator().manual_seed(3))
    draws = torch.Generator().manual_seed(3)

    def perturb(inputs, perturb_radius: float) -> torch.Tensor:  # lipbench's draws, in its order
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs  # captum passes a tuple of inputs
        return inputs + ((torch.rand(inputs.shape, generator=draws, dtype=torch.float32) * 2 - 1) * perturb_radius).to(inputs)

    def explanation(inputs, target: torch.Tensor) -> torch.Tensor:
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs
        return (margin_and_gradient(model, inputs, target)[1],)  # captum iterates over a tuple of maps

    theirs = captum_metrics.sensitivity_max(
        explanation, x, perturb_func=perturb, perturb_radius=radius, n_perturb_samples=samples, target=classes
    )
    torch.testing.assert_close(ours, theirs.to(ours), rtol=1e-9, atol=1e-12)
