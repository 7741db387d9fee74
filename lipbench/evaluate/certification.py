"""Certify a trained model: strict Lipschitz bound, certified radius of every point,
certified accuracy at every eps, and the logits and input gradients the report draws."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lipbench.arrays import CertifyArrays
from lipbench.curves import certified_accuracy_curve
from lipbench.nn import LipschitzUpperBound, lipschitz_upper_bound
from lipbench.nn.certificates import CERTIFICATE_KINDS, certified_radius_and_kind, predictions
from lipbench.runs import RunKey
from lipbench.summaries import CertifySummary, UpperBoundRecord

__all__ = ["Certification", "certify_model", "input_gradients", "level_set_grid"]


@dataclass
class Certification:
    """Per-point arrays (numpy) and the bound they rest on."""

    upper: LipschitzUpperBound
    epsilons: list[float]
    radius: np.ndarray
    correct: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    logits: np.ndarray
    gradients: np.ndarray
    #: Per point, the certificate its radius comes from (an index of ``CERTIFICATE_KINDS``).
    certificate: np.ndarray
    #: For 2-D inputs (two-moons): the logits on a regular grid around the data, for level sets.
    grid: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def certified_accuracy(self) -> list[float]:
        return certified_accuracy_curve(self.radius, self.correct, self.epsilons).tolist()

    @property
    def certificate_counts(self) -> dict[str, int]:
        """How many points each certificate decided (every kind, 0 included)."""
        return {name: int((self.certificate == code).sum()) for code, name in enumerate(CERTIFICATE_KINDS)}

    def arrays(self) -> CertifyArrays:
        return CertifyArrays(
            radius=self.radius,
            correct=self.correct,
            labels=self.labels,
            predictions=self.predictions,
            logits=self.logits,
            gradients=self.gradients,
            epsilons=np.asarray(self.epsilons, dtype=np.float64),
            whole_map_lipschitz=np.asarray(self.upper.whole_map),
            per_logit_lipschitz=np.asarray(self.upper.per_logit),
            certificate=np.asarray(self.certificate, dtype=np.int8),
            grid_x=self.grid.get("x"),
            grid_y=self.grid.get("y"),
            grid_values=self.grid.get("values"),
        )

    def summary(self, key: RunKey, fingerprint: str, parameter_count: int) -> CertifySummary:
        return CertifySummary(
            dataset=key.dataset,
            model=key.model,
            seed=key.seed,
            external=key.external,
            fingerprint=fingerprint,
            points=len(self.radius),
            clean_accuracy=float(self.correct.mean()),
            epsilons=list(self.epsilons),
            certified_accuracy=self.certified_accuracy,
            median_certified_radius_correct=float(np.median(self.radius[self.correct])) if self.correct.any() else 0.0,
            lipschitz_upper_bound=UpperBoundRecord.from_json(self.upper.as_dict(), "certificate"),
            parameter_count=parameter_count,
            certificate_counts=self.certificate_counts,
        )


def input_gradients(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Gradient of the predicted logit (binary: of ``f``) with respect to the input."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        if logits.shape[1] == 1:
            selected = logits[:, 0]
        else:
            selected = logits.gather(1, logits.argmax(dim=1, keepdim=True))[:, 0]
        (gradient,) = torch.autograd.grad(selected.sum(), x)
    return gradient.detach()


@torch.no_grad()
def certify_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    x: torch.Tensor,
    y: torch.Tensor,
    epsilons: Sequence[float],
    batch_size: int = 1024,
    gradient_points: int = 16,
) -> Certification:
    """Certify ``model`` (a plain exported model in eval mode) on ``(x, y)``.

    The radius uses every strict bound (whole map, per logit and, when the model ends in a
    dense layer, the pairwise logit-difference bounds) and keeps the largest valid
    certificate; ``certificate`` records which one each point used.
    """
    for eps in epsilons:
        if not (np.isfinite(eps) and eps >= 0):
            raise ValueError(f"epsilons must be finite and >= 0, got {eps}")
    upper = lipschitz_upper_bound(model, input_shape)
    y = y.detach().cpu()
    device = next(model.parameters()).device
    logits = torch.cat([model(chunk.to(device)).cpu() for chunk in x.split(batch_size)])
    radius, kind = certified_radius_and_kind(logits, upper.whole_map, upper.max_per_logit, upper.pairwise)
    predicted = predictions(logits)
    correct = predicted == y
    gradients = input_gradients(model, x[:gradient_points].to(device)).cpu()
    grid = level_set_grid(model, x) if tuple(input_shape) == (2,) else {}
    return Certification(
        upper=upper,
        epsilons=[float(eps) for eps in epsilons],
        radius=radius.double().numpy(),
        correct=correct.numpy(),
        labels=y.numpy(),
        predictions=predicted.numpy(),
        logits=logits.numpy(),
        gradients=gradients.numpy(),
        certificate=kind.cpu().numpy(),
        grid=grid,
    )


@torch.no_grad()
def level_set_grid(model: nn.Module, x: torch.Tensor, size: int = 200, margin: float = 0.5) -> dict[str, np.ndarray]:
    """Logits of a 2-D model on a ``size x size`` grid covering the points plus ``margin``."""
    low = (x.min(dim=0).values - margin).cpu()
    high = (x.max(dim=0).values + margin).cpu()
    axis_0 = torch.linspace(float(low[0]), float(high[0]), size)
    axis_1 = torch.linspace(float(low[1]), float(high[1]), size)
    mesh = torch.stack(torch.meshgrid(axis_0, axis_1, indexing="xy"), dim=-1).reshape(-1, 2)
    device = next(model.parameters()).device
    values = model(mesh.to(device)).cpu()
    return {"x": axis_0.numpy(), "y": axis_1.numpy(), "values": values.reshape(size, size, -1).numpy()}
