"""The soundness gate: empirical evidence against the recorded certificates.

Checks, one function each (each returns its record and its failures; a failure names the
model, the point and the numbers):

1. :func:`check_lipschitz_lower_bounds`: the empirical Lipschitz lower bound (gradient
   norms at points, gradient-norm ascent, difference quotients of attack pairs) against
   the recorded strict upper bound, whole map and per logit, with tolerance ``1 + 1e-4``;
2. :func:`check_layer_bounds`: every layer's lower bound (power iteration on the layer's
   operator at its real input size, which converges from below) against its upper bound;
3. :func:`check_minimal_attacks`: minimal-perturbation attacks (CW, DeepFool; run on every
   correctly classified point, certified or not; DeepFool on its longer curve when there
   is one): a verified adversarial example closer than the certified radius beats it;
4. :func:`check_robust_vs_certified`: robust accuracy under attack below certified accuracy;
5. :func:`audit_certificates`: PGD restricted to ``0.999 *`` the certified radius of each
   audited certified point must not change its class;
6. :func:`check_pairwise_bounds`: every recorded pairwise bound ``c_ij`` (the Lipschitz
   constant of the logit difference ``f_i - f_j`` that the pairwise certificate divides by)
   against the gradient norm of that difference, for the pairs ``(top, j)`` at each audited
   point and along gradient-norm ascent for its top two (recorded under
   ``certificate_audit["pairwise_bounds"]``).

There is no switch that turns the gate off. Unconstrained models go through the same
checks with their (large, but strict) bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lipbench.arrays import AttackArrays, CertifyArrays
from lipbench.nn import input_jacobian, lipschitz_lower_bound, pair_quotients
from lipbench.nn.certificates import predictions
from lipbench.nn.lower_bound import logit_difference_ascent
from lipbench.runs import RunKey
from lipbench.summaries import AttackSummary, LayerBoundRecord, LayerCheck, LowerBoundRecord, UpperBoundRecord, VerifySummary

__all__ = [
    "TOLERANCE",
    "VerifyOptions",
    "Verification",
    "verify_model",
    "check_lipschitz_lower_bounds",
    "check_layer_bounds",
    "check_minimal_attacks",
    "check_robust_vs_certified",
    "audit_certificates",
    "check_pairwise_bounds",
]

TOLERANCE = 1e-4
_LIMIT = 1 + TOLERANCE


@dataclass(frozen=True)
class VerifyOptions:
    """How hard the gate looks (``evaluate.verify`` of a profile)."""

    ascent_steps: int = 10
    audit_points: int = 100
    audit_steps: int = 20
    layer_power_iterations: int = 30


@dataclass
class Verification:
    """Every check's record, and the failures (empty: verified)."""

    label: str
    upper: UpperBoundRecord
    lower: LowerBoundRecord
    layers: list[LayerCheck]
    audit: dict[str, Any]
    minimal_attack_checks: dict[str, dict[str, Any]]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self, key: RunKey, fingerprint: str) -> VerifySummary:
        return VerifySummary(
            dataset=key.dataset,
            model=key.model,
            seed=key.seed,
            external=key.external,
            fingerprint=fingerprint,
            label=self.label,
            status="verified" if self.passed else "failed",
            tolerance=TOLERANCE,
            upper_bound=self.upper,
            lower_bound=self.lower,
            layers=self.layers,
            certificate_audit=self.audit,
            minimal_attack_checks=self.minimal_attack_checks,
            failures=self.failures,
        )


def _pair_lower_bounds(model: nn.Module, x: torch.Tensor, attacks: AttackArrays) -> tuple[float, float]:
    """Largest difference quotients (whole map, one logit) between attacked points and their
    stored adversarial examples."""
    indices = attacks.example_indices
    whole_max = logit_max = 0.0
    for examples in attacks.examples.values():
        rows = examples.reshape(-1, len(indices), *x.shape[1:]) if examples.ndim == x.ndim + 1 else examples[None]
        for row in rows:
            found = ~np.isnan(row.reshape(len(indices), -1)).any(axis=1)
            if found.any():
                whole, per_logit = pair_quotients(model, x[indices[found]], torch.from_numpy(row[found]).to(x))
                whole_max, logit_max = max(whole_max, float(whole.max())), max(logit_max, float(per_logit.max()))
    return whole_max, logit_max


def check_lipschitz_lower_bounds(
    label: str, model: nn.Module, x: torch.Tensor, upper: UpperBoundRecord, attacks: AttackArrays, options: VerifyOptions
) -> tuple[LowerBoundRecord, list[str]]:
    """Check 1: empirical lower bounds (points, ascent, attack pairs) against the upper bounds."""
    lower = lipschitz_lower_bound(model, x[: max(options.audit_points, 1)], ascent_steps=options.ascent_steps)
    pair_whole, pair_logit = _pair_lower_bounds(model, x, attacks)
    sources = dict(lower.sources) | {"attack_pairs_whole_map": pair_whole, "attack_pairs_max_per_logit": pair_logit}
    whole = max(lower.whole_map, pair_whole)
    record = LowerBoundRecord(whole, list(lower.per_logit), lower.max_per_logit, lower.logit_difference, sources)
    failures = []
    if whole > upper.whole_map * _LIMIT:
        failures.append(
            f"{label}: empirical Lipschitz lower bound {whole:.6g} exceeds the certified upper bound "
            f"{upper.whole_map:.6g} of the whole logit map (sources: {sources})"
        )
    for index, (low, high) in enumerate(zip(lower.per_logit, upper.per_logit)):
        if low > high * _LIMIT:
            failures.append(f"{label}: logit {index} has gradient norm {low:.6g} above its certified bound {high:.6g}")
    if pair_logit > max(upper.per_logit) * _LIMIT:
        failures.append(f"{label}: an attack pair moved one logit at rate {pair_logit:.6g} > bound {max(upper.per_logit):.6g}")
    return record, failures


def _linear_part(module: nn.Module) -> nn.Module:
    """``x -> module(x) - module(0)``: the linear operator of an affine layer."""

    class Linear(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return module(x) - module(torch.zeros_like(x))

    return Linear()


def _power_iteration_norm(module: nn.Module, layer: LayerBoundRecord, iterations: int, generator: torch.Generator) -> float:
    """``||A v||`` after power iteration on ``A^T A`` (a lower bound of the operator norm)."""
    operator, weight = _linear_part(module), module.weight
    v = torch.randn((1, *layer.input_shape), generator=generator, dtype=weight.dtype).to(weight.device)
    estimate = 0.0
    for _ in range(iterations):
        v = (v / v.norm()).requires_grad_(True)
        with torch.enable_grad():
            out = operator(v)
            (back,) = torch.autograd.grad(out, v, out.detach())
        estimate = float(out.detach().norm())  # ||A v|| with ||v|| = 1
        v = back.detach()
    return estimate


def check_layer_bounds(
    label: str, model: nn.Module, layers: list[LayerBoundRecord], iterations: int = 30
) -> tuple[list[LayerCheck], list[str]]:
    """Check 2: power iteration on every Linear/Conv2d layer at its recorded input shape."""
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(0)
    checks, failures = [], []
    for layer in layers:
        module = modules.get(layer.name)
        lower = None
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            lower = _power_iteration_norm(module, layer, iterations, generator)
            if lower > layer.bound * _LIMIT:
                failures.append(
                    f"{label}: layer {layer.name} ({layer.type}) has operator norm >= {lower:.6g}, above its "
                    f"recorded bound {layer.bound:.6g}"
                )
        checks.append(LayerCheck(layer.name, layer.type, layer.bound, layer.method, lower))
    return checks, failures


def _beaten(label: str, name: str, norms: np.ndarray, radius: np.ndarray, correct: np.ndarray) -> tuple[dict, list[str]]:
    n = len(norms)
    beaten = np.flatnonzero(correct[:n] & (norms < radius[:n] * (1 - 1e-6)))
    failures = [
        f"{label}: {name} found an adversarial example at distance {norms[point]:.6g} from test point "
        f"{point}, inside its certified radius {float(radius[point]):.6g}"
        for point in beaten[:5]
    ]
    return {"points": int(correct[:n].sum()), "inside_certified_radius": len(beaten)}, failures


def check_minimal_attacks(label: str, certificates: CertifyArrays, attacks: AttackArrays) -> tuple[dict[str, dict], list[str]]:
    """Check 3: no minimal adversarial example inside a certified radius (per attack, on the
    points it ran on: the attack set, or for DeepFool its longer curve when there is one)."""
    radius, correct = np.asarray(certificates.radius, np.float64), np.asarray(certificates.correct, bool)
    records, failures = {}, []
    for name, norms in attacks.min_norms.items():
        if name == "deepfool_l2" and attacks.deepfool_curve_min_norm is not None:
            norms = attacks.deepfool_curve_min_norm
        records[name], found = _beaten(label, name, np.asarray(norms, np.float64), radius, correct)
        failures += found
    return records, failures


def check_robust_vs_certified(label: str, attack: AttackSummary) -> list[str]:
    """Check 4: robust accuracy under attack is never below certified accuracy (same points)."""
    return [
        f"{label}: robust accuracy under attack {robust:.4f} is below certified accuracy {certified:.4f} at eps {eps}"
        for eps, robust, certified in zip(attack.epsilons, attack.robust_accuracy, attack.certified_accuracy)
        if robust < certified - 1e-12
    ]


def _margin(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        return logits[:, 0] * (2 * label - 1)
    true = logits.gather(1, label[:, None])[:, 0]
    return true - logits.scatter(1, label[:, None], float("-inf")).max(dim=1).values


def audit_certificates(
    model: nn.Module, x: torch.Tensor, radius: torch.Tensor, bounds: tuple[float, float], steps: int = 20
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
            margin = _margin(model((x + delta.reshape(x.shape)).clamp(*bounds)), label)
            (gradient,) = torch.autograd.grad(margin.sum(), delta)
        with torch.no_grad():
            delta = delta - 0.25 * budget * gradient / gradient.norm(dim=1, keepdim=True).clamp_min(1e-12)
            delta = delta * torch.clamp(budget / delta.norm(dim=1, keepdim=True).clamp_min(1e-12), max=1.0)
    with torch.no_grad():
        attacked = (x + delta.reshape(x.shape)).clamp(*bounds)
        changed = predictions(model(attacked)) != label
        distance = (attacked - x).flatten(1).norm(dim=1)
    return changed, distance


def _audit(
    label: str,
    model: nn.Module,
    x: torch.Tensor,
    certificates: CertifyArrays,
    bounds: tuple[float, float],
    options: VerifyOptions,
) -> tuple[dict[str, Any], list[str]]:
    """Check 5: the certificate audit on the first ``audit_points`` certified points."""
    radius = torch.from_numpy(np.asarray(certificates.radius, dtype=np.float64))
    correct = np.asarray(certificates.correct, dtype=bool)
    audited = np.flatnonzero(correct & (radius.numpy() > 0))[: options.audit_points]
    record: dict[str, Any] = {"points": len(audited), "steps": options.audit_steps, "changed": 0}
    if not len(audited):
        return record, []
    changed, distance = audit_certificates(model, x[audited], radius[audited].to(x), bounds, options.audit_steps)
    record["changed"] = int(changed.sum())
    record["mean_relative_distance"] = float((distance / radius[audited].to(x).clamp_min(1e-12)).mean())
    failures = [
        f"{label}: test point {audited[point]} changed class under a perturbation of norm "
        f"{float(distance[point]):.6g}, inside its certified radius {float(radius[audited[point]]):.6g}"
        for point in np.flatnonzero(changed.cpu().numpy())[:5]
    ]
    return record, failures


def _pairwise_rates(model: nn.Module, x: torch.Tensor, ascent_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top class of each point and, per point and class ``j``, the largest gradient norm of
    ``f_top - f_j`` found (at the point; for the runner-up also along gradient-norm ascent)."""
    tops, rates = [], []
    for batch in x.split(256):
        with torch.no_grad():
            top2 = model(batch).topk(2, dim=1).indices
        jacobian = input_jacobian(model, batch).double()  # (N, K, D)
        top_rows = jacobian.gather(1, top2[:, :1, None].expand(-1, 1, jacobian.shape[2]))
        rate = torch.linalg.vector_norm(top_rows - jacobian, dim=2)
        ascent = logit_difference_ascent(model, batch, top2[:, 0], top2[:, 1], steps=ascent_steps).double()
        tops.append(top2[:, 0].cpu())
        rates.append(rate.scatter_reduce(1, top2[:, 1:], ascent[:, None], reduce="amax").cpu())
    return torch.cat(tops), torch.cat(rates)


def check_pairwise_bounds(
    label: str, model: nn.Module, x: torch.Tensor, upper: UpperBoundRecord, options: VerifyOptions
) -> tuple[dict[str, Any], list[str]]:
    """Check 6: no logit difference ``f_top - f_j`` moves faster than its recorded pairwise
    bound (tolerance ``1 + 1e-4``) at the first ``audit_points`` points or along ascent."""
    if upper.pairwise is None or len(upper.pairwise) < 2:
        return {"pairs": 0}, []
    points = x[: max(options.audit_points, 1)]
    top, rates = _pairwise_rates(model, points, options.ascent_steps)
    bounds = torch.tensor(upper.pairwise, dtype=torch.float64)[top]  # (N, K): c_{top, j}
    others = torch.ones_like(rates, dtype=torch.bool).scatter(1, top[:, None], False)
    ratio = torch.where(others & (bounds > 0), rates / bounds.clamp_min(1e-300), 0.0)
    record = {
        "points": len(points),
        "pairs": int(others.sum()),
        "max_rate_over_bound": float(ratio.max()),
        "beaten": int((others & (rates > bounds * _LIMIT)).sum()),
    }
    failures = [
        f"{label}: the logit difference f_{int(top[point])} - f_{j} (pair ({int(top[point])}, {j})) has gradient norm "
        f"{float(rates[point, j]):.6g} at or near test point {point}, above its certified pairwise bound "
        f"{float(bounds[point, j]):.6g}"
        for point, j in (others & (rates > bounds * _LIMIT)).nonzero().tolist()[:5]
    ]
    return record, failures


def verify_model(
    label: str,
    model: nn.Module,
    x: torch.Tensor,
    certificates: CertifyArrays,
    upper: UpperBoundRecord,
    attacks: AttackArrays,
    attack_summary: AttackSummary,
    bounds: tuple[float, float],
    options: VerifyOptions = VerifyOptions(),
) -> Verification:
    """Run every check of the module docstring on the points ``x`` (the certify stage's,
    whose arrays are ``certificates``) against the recorded bound ``upper``."""
    lower, failures = check_lipschitz_lower_bounds(label, model, x, upper, attacks, options)
    layers, layer_failures = check_layer_bounds(label, model, upper.layers, options.layer_power_iterations)
    minimal, minimal_failures = check_minimal_attacks(label, certificates, attacks)
    audit, audit_failures = _audit(label, model, x, certificates, bounds, options)
    audit["pairwise_bounds"], pairwise_failures = check_pairwise_bounds(label, model, x, upper, options)
    failures += layer_failures + minimal_failures + check_robust_vs_certified(label, attack_summary) + audit_failures
    failures += pairwise_failures
    if not math.isfinite(upper.whole_map):
        failures.append(f"{label}: the recorded upper bound is not finite ({upper.whole_map})")
    return Verification(label, upper, lower, layers, audit, minimal, failures)
