"""The soundness gate: empirical evidence against the recorded certificates.

Checks, each of which fails verification with a message naming the model, the point and
the numbers:

1. the empirical Lipschitz lower bound (gradient norms at points, gradient-norm ascent,
   difference quotients of attack pairs) against the recorded strict upper bound, whole
   map and per logit, with tolerance ``1 + 1e-4``;
2. every layer's lower bound (power iteration on the layer's operator at its real input
   size, which converges from below) against the layer's recorded upper bound;
3. minimal-perturbation attacks (CW, DeepFool; run on every correctly classified point,
   certified or not): a verified adversarial example closer than the point's certified
   radius beats the certificate;
4. an audit attack: PGD restricted to ``0.999 *`` the certified radius of each audited
   certified point must not change its class;
5. robust accuracy under attack below certified accuracy at some eps.

There is no switch that turns the gate off. Unconstrained models go through the same
checks with their (large, but strict) bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lipbench.evaluate.certify import predictions
from lipbench.nn import lipschitz_lower_bound, pair_quotients

__all__ = ["TOLERANCE", "Verification", "verify_model", "layer_lower_bounds", "audit_certificates"]

TOLERANCE = 1e-4


@dataclass
class Verification:
    label: str
    upper: Mapping[str, Any]
    lower: dict[str, Any]
    layers: list[dict[str, Any]]
    audit: dict[str, Any]
    minimal_attack_checks: dict[str, Any]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.label,
            "status": "verified" if self.passed else "failed",
            "tolerance": TOLERANCE,
            "upper_bound": dict(self.upper),
            "lower_bound": self.lower,
            "layers": self.layers,
            "certificate_audit": self.audit,
            "minimal_attack_checks": self.minimal_attack_checks,
            "failures": self.failures,
        }


def _linear_part(module: nn.Module) -> nn.Module:
    """``x -> module(x) - module(0)``: the linear operator of an affine layer."""

    class Linear(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return module(x) - module(torch.zeros_like(x))

    return Linear()


def layer_lower_bounds(model: nn.Module, layers: list[Mapping[str, Any]], iterations: int = 30) -> list[dict[str, Any]]:
    """Power iteration (``A^T A``) on every Linear/Conv2d layer at its recorded input shape."""
    modules = dict(model.named_modules())
    results = []
    generator = torch.Generator().manual_seed(0)
    for layer in layers:
        module = modules.get(layer["name"])
        entry = {"name": layer["name"], "type": layer["type"], "upper": layer["bound"], "method": layer["method"]}
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            operator = _linear_part(module)
            parameter = module.weight
            v = torch.randn((1, *layer["input_shape"]), generator=generator, dtype=parameter.dtype).to(parameter.device)
            estimate = 0.0
            for _ in range(iterations):
                v = (v / v.norm()).requires_grad_(True)
                with torch.enable_grad():
                    out = operator(v)
                    (back,) = torch.autograd.grad(out, v, out.detach())
                estimate = float(out.detach().norm())  # ||A v|| with ||v|| = 1: a lower bound
                v = back.detach()
            entry["lower"] = estimate
        results.append(entry)
    return results


def audit_certificates(
    model: nn.Module,
    x: torch.Tensor,
    radius: torch.Tensor,
    bounds: tuple[float, float],
    steps: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD within ``0.999 * radius`` (per point) minimising the margin of the predicted class.

    Returns ``(changed, distance)``: whether the class changed, and the perturbation norm.
    Inputs stay in ``bounds``.
    """
    with torch.no_grad():
        label = predictions(model(x))
    budget = (radius * 0.999).clamp_min(0).to(x.dtype)[:, None]
    generator = torch.Generator().manual_seed(0)
    delta = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device).flatten(1)
    delta = delta / delta.norm(dim=1, keepdim=True).clamp_min(1e-12) * budget
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            logits = model((x + delta.reshape(x.shape)).clamp(*bounds))
            if logits.shape[1] == 1:
                margin = logits[:, 0] * (2 * label - 1)
            else:
                true = logits.gather(1, label[:, None])[:, 0]
                margin = true - logits.scatter(1, label[:, None], float("-inf")).max(dim=1).values
            (gradient,) = torch.autograd.grad(margin.sum(), delta)
        with torch.no_grad():
            delta = delta - 0.25 * budget * gradient / gradient.norm(dim=1, keepdim=True).clamp_min(1e-12)
            delta = delta * torch.clamp(budget / delta.norm(dim=1, keepdim=True).clamp_min(1e-12), max=1.0)
    with torch.no_grad():
        attacked = (x + delta.reshape(x.shape)).clamp(*bounds)
        changed = predictions(model(attacked)) != label
        distance = (attacked - x).flatten(1).norm(dim=1)
    return changed, distance


def verify_model(
    label: str,
    model: nn.Module,
    x: torch.Tensor,
    certificates: Mapping[str, np.ndarray],
    upper: Mapping[str, Any],
    attacks: Mapping[str, np.ndarray] | None,
    attack_summary: Mapping[str, Any] | None,
    bounds: tuple[float, float],
    *,
    ascent_steps: int = 10,
    audit_points: int = 100,
    audit_steps: int = 20,
    layer_iterations: int = 30,
) -> Verification:
    """Run every check of the module docstring; ``certificates`` are the certify stage's
    arrays for the points ``x`` (``radius``, ``correct``), ``upper`` its recorded bound."""
    failures: list[str] = []
    whole_upper = float(upper["whole_map"])
    logit_upper = [float(v) for v in upper["per_logit"]]
    limit = 1 + TOLERANCE

    lower = lipschitz_lower_bound(model, x[: max(audit_points, 1)], ascent_steps=ascent_steps)
    lower_record = lower.as_dict()
    pair_whole = pair_logit = 0.0
    if attacks is not None:
        indices = attacks["example_indices"]
        for key, examples in attacks.items():
            if not key.startswith("examples_"):
                continue
            stacked = examples.reshape(-1, len(indices), *x.shape[1:]) if examples.ndim == x.ndim + 1 else examples[None]
            for row in stacked:
                found = ~np.isnan(row.reshape(len(indices), -1)).any(axis=1)
                if found.any():
                    whole, per_logit = pair_quotients(model, x[indices[found]], torch.from_numpy(row[found]).to(x))
                    pair_whole = max(pair_whole, float(whole.max()))
                    pair_logit = max(pair_logit, float(per_logit.max()))
        lower_record["sources"]["attack_pairs_whole_map"] = pair_whole
        lower_record["sources"]["attack_pairs_max_per_logit"] = pair_logit
    lower_whole = max(lower.whole_map, pair_whole)
    lower_record["whole_map"] = lower_whole
    if lower_whole > whole_upper * limit:
        failures.append(
            f"{label}: empirical Lipschitz lower bound {lower_whole:.6g} exceeds the certified upper bound "
            f"{whole_upper:.6g} of the whole logit map (sources: {lower_record['sources']})"
        )
    for index, (low, high) in enumerate(zip(lower.per_logit, logit_upper)):
        if low > high * limit:
            failures.append(f"{label}: logit {index} has gradient norm {low:.6g} above its certified bound {high:.6g}")
    if pair_logit > max(logit_upper) * limit:
        failures.append(f"{label}: an attack pair moved one logit at rate {pair_logit:.6g} > bound {max(logit_upper):.6g}")

    layers = layer_lower_bounds(model, list(upper.get("layers", [])), layer_iterations)
    for layer in layers:
        if "lower" in layer and layer["lower"] > layer["upper"] * limit:
            failures.append(
                f"{label}: layer {layer['name']} ({layer['type']}) has operator norm >= {layer['lower']:.6g}, above its "
                f"recorded bound {layer['upper']:.6g}"
            )

    radius = torch.from_numpy(np.asarray(certificates["radius"], dtype=np.float64))
    correct = np.asarray(certificates["correct"], dtype=bool)
    minimal_checks: dict[str, Any] = {}
    if attacks is not None:
        for key, norms in attacks.items():
            if not key.startswith("min_norm_"):
                continue
            name = key.removeprefix("min_norm_")
            n = len(norms)
            beaten = np.flatnonzero(correct[:n] & (norms < radius.numpy()[:n] * (1 - 1e-6)))
            minimal_checks[name] = {"points": int(correct[:n].sum()), "inside_certified_radius": len(beaten)}
            for point in beaten[:5]:
                failures.append(
                    f"{label}: {name} found an adversarial example at distance {norms[point]:.6g} from test point "
                    f"{point}, inside its certified radius {float(radius[point]):.6g}"
                )
    if attack_summary is not None:
        certified_acc = attack_summary.get("certified_accuracy") or []
        for eps, robust, certified in zip(attack_summary["epsilons"], attack_summary["robust_accuracy"], certified_acc):
            if robust < certified - 1e-12:
                failures.append(
                    f"{label}: robust accuracy under attack {robust:.4f} is below certified accuracy {certified:.4f} at eps {eps}"
                )

    audited = np.flatnonzero(correct & (radius.numpy() > 0))[:audit_points]
    audit = {"points": len(audited), "steps": audit_steps, "changed": 0}
    if len(audited):
        changed, distance = audit_certificates(model, x[audited], radius[audited].to(x), bounds, audit_steps)
        audit["changed"] = int(changed.sum())
        audit["mean_relative_distance"] = float((distance / radius[audited].to(x).clamp_min(1e-12)).mean())
        for point in np.flatnonzero(changed.cpu().numpy())[:5]:
            failures.append(
                f"{label}: test point {audited[point]} changed class under a perturbation of norm "
                f"{float(distance[point]):.6g}, inside its certified radius {float(radius[audited[point]]):.6g}"
            )
    if not math.isfinite(whole_upper):
        failures.append(f"{label}: the recorded upper bound is not finite ({whole_upper})")
    return Verification(label, upper, lower_record, layers, audit, minimal_checks, failures)
