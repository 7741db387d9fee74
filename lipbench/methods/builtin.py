"""The paper's methods (section 5) and two references.

=========  ==========  ====================================================  ==============
name       paper       network                                               loss
=========  ==========  ====================================================  ==============
adv        Adv         unconstrained ReLU net, L2 PGD training (Madry et al.)  cross-entropy
lip1_log   1LIP_log    Björck weights, ReLU, max pooling                     cross-entropy
gnp_hin    GNP_hin^m   Björck, GroupSort2 / FullSort, L2-norm pooling        hinge, margin m
gnp_log    GNP_log     Björck, GroupSort2 / FullSort, L2-norm pooling        cross-entropy
hkr        hKR_α^m     Björck, GroupSort2 / FullSort, L2-norm pooling        hKR (eq. 5/12)
kr         (Fig. 1)    as hkr                                                KR (hKR, λ = 0)
standard   (ref.)      unconstrained ReLU net                                cross-entropy
=========  ==========  ====================================================  ==============
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lipbench.methods.base import Method, register_method

__all__ = ["l2_pgd"]


def _per_sample_norm(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t.flatten(1), dim=1).reshape(-1, *([1] * (t.ndim - 1)))


def l2_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss: Callable[[Tensor, Tensor], Tensor],
    epsilon: float,
    steps: int,
    step_size: float,
    bounds: tuple[float, float] | None,
    generator: torch.Generator,
) -> Tensor:
    """L2 projected gradient ascent on ``loss`` from a random start in the eps-ball (Madry et al.)."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    radius = torch.rand((len(x),) + (1,) * (x.ndim - 1), generator=generator, dtype=x.dtype).to(x.device)
    delta = noise / _per_sample_norm(noise).clamp_min(1e-12) * radius * epsilon
    for _ in range(steps):
        delta.requires_grad_(True)
        candidate = x + delta if bounds is None else (x + delta).clamp(*bounds)
        (gradient,) = torch.autograd.grad(loss(model(candidate), y), delta)
        with torch.no_grad():
            delta = delta + step_size * gradient / _per_sample_norm(gradient).clamp_min(1e-12)
            delta = delta * (epsilon / _per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
            if bounds is not None:
                delta = (x + delta).clamp(*bounds) - x
    return (x + delta).detach()


@register_method("standard")
class Standard(Method):
    paper_name = "Standard"
    reference = {"link": "", "authors": "", "venue": "reference (no robustness)"}
    description = "Unconstrained ReLU network trained with cross-entropy (reference, no robustness)."
    kit = "unconstrained"
    loss = "cross_entropy"
    defaults = {"temperature": 1.0}


@register_method("adv")
class Adversarial(Method):
    paper_name = "Adv"
    reference = {
        "link": "https://arxiv.org/abs/1706.06083",
        "authors": "Madry, Makelov, Schmidt, Tsipras, Vladu",
        "venue": "ICLR 2018",
    }
    description = "Madry et al. adversarial training: unconstrained ReLU network, L2 PGD examples, cross-entropy."
    kit = "unconstrained"
    loss = "cross_entropy"
    defaults = {"temperature": 1.0}
    #: epsilon: L2 radius of the training attack; steps and step_size (relative to epsilon).
    training_defaults = {"epsilon": 0.5, "steps": 7, "relative_step_size": 0.3}

    def training_inputs(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        loss: Callable[[Tensor, Tensor], Tensor],
        params: Mapping[str, Any],
        bounds: tuple[float, float] | None,
        generator: torch.Generator,
    ) -> Tensor:
        epsilon = float(params["epsilon"])
        steps = int(params["steps"])
        if epsilon < 0 or steps < 0:
            raise ValueError(f"adv: epsilon and steps must be >= 0, got {epsilon}, {steps}")
        if epsilon == 0 or steps == 0:
            return x
        return l2_pgd(model, x, y, loss, epsilon, steps, float(params["relative_step_size"]) * epsilon, bounds, generator)


@register_method("lip1_log")
class Lip1Log(Method):
    paper_name = "1LIP_log"
    reference = {
        "link": "https://arxiv.org/abs/1811.05381",
        "authors": "Anil, Lucas, Grosse",
        "venue": "ICML 2019 (Björck); baseline of CVPR 2021 hKR",
    }
    description = "Björck-constrained weights with ReLU and max pooling, cross-entropy (log loss)."
    kit = "lip1"
    loss = "cross_entropy"
    defaults = {"temperature": 1.0}


@register_method("gnp_log")
class GNPLog(Method):
    paper_name = "GNP_log"
    reference = {"link": "https://arxiv.org/abs/1811.05381", "authors": "Anil, Lucas, Grosse", "venue": "ICML 2019"}
    description = "Gradient-norm-preserving network (GroupSort2, FullSort, L2-norm pooling), cross-entropy."
    kit = "gnp"
    loss = "cross_entropy"
    defaults = {"temperature": 1.0}


@register_method("gnp_hin")
class GNPHinge(Method):
    paper_name = "GNP_hin^m"
    reference = {"link": "https://arxiv.org/abs/1811.05381", "authors": "Anil, Lucas, Grosse", "venue": "ICML 2019"}
    description = "Gradient-norm-preserving network with the multiclass hinge loss of margin m (Anil et al.)."
    kit = "gnp"
    loss = "hinge"
    defaults = {"margin": 1.0}


@register_method("hkr")
class HKR(Method):
    paper_name = "hKR_α^m"
    reference = {
        "link": "https://arxiv.org/abs/2006.06520",
        "authors": "Serrurier, Mamalet, González-Sanz, Boissin, Loubes, del Barrio",
        "venue": "CVPR 2021",
    }
    description = "Gradient-norm-preserving network with the hinge-regularised KR loss (eq. 5 / eq. 12)."
    kit = "gnp"
    loss = "hkr"
    defaults = {"alpha": 50.0, "margin": 1.0}


@register_method("kr")
class KR(Method):
    paper_name = "KR"
    reference = {
        "link": "https://arxiv.org/abs/2006.06520",
        "authors": "Serrurier, Mamalet, González-Sanz, Boissin, Loubes, del Barrio",
        "venue": "CVPR 2021",
    }
    description = "Vanilla Kantorovich-Rubinstein (hKR with alpha = 0): the Wasserstein dual, no hinge (paper Fig. 1)."
    kit = "gnp"
    loss = "hkr"
    fixed = {"alpha": 0.0, "margin": 1.0}
