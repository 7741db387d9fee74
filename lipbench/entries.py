"""Leaderboard entries: built from a model's stage summaries, validated by a JSON schema.

An entry carries RobustBench's fields (name, link, authors, venue, architecture, dataset,
threat model, eps, clean_acc, autoattack_acc, additional_data, footnote) plus certified
accuracy at every eps, the verified Lipschitz bounds and status, per-attack robustness,
costs and the environment (``leaderboard.schema.json``).

Same points: ``clean_acc``, ``certified_acc``, ``robust_acc``, ``per_attack_robust_acc``
and ``autoattack_acc`` are all measured on the attack stage's points (``points.attacked``),
so they can be compared; ``certified_acc_certify_points`` is certified accuracy on the
certify stage's larger set (``points.certified``) and ``test_acc`` the clean accuracy on
the whole test set. :func:`build_entry` refuses an entry where, on the same points,
certified > robust or robust > clean at some eps (a beaten certificate or a bookkeeping
error: never published). Light module: no torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from lipbench.summaries import (
    AttackSummary,
    CertifySummary,
    ExplainSummary,
    ModelDescription,
    TrainSummary,
    VerifySummary,
)

__all__ = [
    "SCHEMA_PATH",
    "LeaderboardEntryError",
    "validate_entry",
    "accuracy_order_violations",
    "require_accuracy_order",
    "build_entry",
    "accuracy_at",
]

SCHEMA_PATH = Path(__file__).with_name("leaderboard.schema.json")
_TOLERANCE = 1e-12  # accuracies are counts over the same points: compared exactly


class LeaderboardEntryError(ValueError):
    """An entry does not satisfy the schema or the accuracy ordering; the message names it."""


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


def validate_entry(entry: Mapping[str, Any]) -> None:
    """Raise :class:`LeaderboardEntryError` naming the first invalid field."""
    errors = sorted(_validator().iter_errors(entry), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        label = entry.get("name", "?") if isinstance(entry, Mapping) else "?"
        where = f"field '{field}'" if field else "the entry"
        raise LeaderboardEntryError(f"leaderboard entry {label!r}: {where}: {error.message}")


def _curve(epsilons: Iterable[float], values: Iterable[float]) -> list[dict[str, float]]:
    return [{"eps": float(eps), "acc": float(value)} for eps, value in zip(epsilons, values)]


def accuracy_at(curve: list[dict[str, float]], eps: float) -> float | None:
    """The accuracy of a ``[{eps, acc}, ...]`` curve at ``eps`` (None when absent)."""
    return next((point["acc"] for point in curve if point["eps"] == eps), None)


def accuracy_order_violations(attack: AttackSummary) -> list[str]:
    """Where certified <= robust (all attacks, and each attack) <= clean fails on the attack
    points, at any eps; also the DeepFool curve's own points. Empty when every ordering holds."""
    problems = []
    clean = attack.clean_accuracy
    for e, eps in enumerate(attack.epsilons):
        certified, robust = attack.certified_accuracy[e], attack.robust_accuracy[e]
        checks = [("certified", certified, "all attacks", robust), ("all attacks", robust, "clean", clean)]
        for name, curve in attack.per_attack_robust_accuracy.items():
            checks += [
                ("certified", certified, name, curve[e]),
                (name, curve[e], "clean", clean),
                ("all attacks", robust, name, curve[e]),
            ]
        problems += [
            f"eps {eps:g}: {low_name} {low:.4f} > {high_name} {high:.4f}"
            for low_name, low, high_name, high in checks
            if low > high + _TOLERANCE
        ]
    curve = attack.deepfool_curve
    if curve is not None:
        for eps, certified, robust in zip(attack.epsilons, curve.certified_accuracy, curve.robust_accuracy):
            if certified > robust + _TOLERANCE:
                problems.append(f"eps {eps:g}: certified {certified:.4f} > DeepFool {robust:.4f} on {curve.points} points")
    return problems


def require_accuracy_order(attack: AttackSummary) -> None:
    """Raise :class:`LeaderboardEntryError` naming the run and the numbers when certified <=
    robust <= clean fails on its attack points (see :func:`accuracy_order_violations`)."""
    violations = accuracy_order_violations(attack)
    if violations:
        raise LeaderboardEntryError(
            f"{attack.key.label} refused: on the same {attack.n_points} points "
            + "; ".join(violations[:5])
            + ". A certificate was beaten or a stage's outputs are inconsistent: rerun verify (dvc repro)."
        )


def _footnote(description: ModelDescription, attack: AttackSummary, verify: VerifySummary, bound: float) -> str:
    notes = []
    if not verify.verified:
        notes.append("FAILED verification: certificates not trusted")
    if not description.constrained:
        notes.append(f"unconstrained network: strict bound L <= {bound:.3g}, certificates are tiny")
    if attack.external is not None:
        notes.append("externally trained checkpoint")
    if attack.precision != "fp32":
        notes.append(f"attacks searched in {attack.precision} (hits re-checked in fp32)")
    return "; ".join(notes)


def build_entry(
    profile: str,
    description: ModelDescription,
    certify: CertifySummary,
    attack: AttackSummary,
    verify: VerifySummary,
    train: TrainSummary | None = None,
    reported: float | None = None,
    explain: ExplainSummary | None = None,
) -> dict[str, Any]:
    """One model's entry from its summaries (``train`` is None for external models);
    ``reported``: the clean accuracy the model's authors claim, when known; ``explain``: the
    explain stage's summary (``None``: not measured, the entry's ``explain`` is null).

    Raises :class:`LeaderboardEntryError` if the summaries are of different runs, violate
    the accuracy ordering on the same points, or the entry fails the schema."""
    key = attack.key
    if len({certify.key, attack.key, verify.key} | ({train.key} if train else set())) != 1:
        raise LeaderboardEntryError(f"leaderboard entry of {key.label}: its summaries belong to different runs")
    require_accuracy_order(attack)
    model = key.external or key.model
    entry = {
        "name": description.paper_name if model == description.method else f"{description.paper_name} ({model})",
        "link": description.reference.link,
        "authors": description.reference.authors,
        "venue": description.reference.venue,
        "architecture": f"{description.architecture} ({description.kit})",
        "dataset": key.dataset,
        "threat_model": "L2",
        "eps": float(attack.headline_eps),
        **_accuracies(certify, attack, train),
        "reported": None if reported is None else float(reported),
        "number_forward_passes": 1,  # lipbench's models and the ones it accepts are deterministic
        "unreliable": not verify.verified or attack.precision != "fp32",
        "additional_data": False,
        "footnote": _footnote(description, attack, verify, certify.lipschitz_upper_bound.whole_map),
        "model": model,
        "method": description.method,
        "seed": int(key.seed),
        "profile": profile,
        "constrained": description.constrained,
        "external": key.external is not None,
        "lipschitz": _lipschitz(certify, verify),
        "explain": None if explain is None else _explain(explain),
        "verification": {"status": verify.status, "failures": list(verify.failures)},
        **_costs(certify, train),
        "environment": dict((train or certify).environment)
        | {"attack_precision": attack.precision, "attack_compiled": attack.compiled},
    }
    validate_entry(entry)
    return entry


def _accuracies(certify: CertifySummary, attack: AttackSummary, train: TrainSummary | None) -> dict[str, Any]:
    """The accuracy fields and the points each is measured on (see the module docstring)."""
    per_attack = {name: _curve(attack.epsilons, accuracy) for name, accuracy in attack.per_attack_robust_accuracy.items()}
    autoattack = per_attack.get("autoattack_l2")
    return {
        "clean_acc": float(attack.clean_accuracy),
        "test_acc": None if train is None else float(train.test_accuracy),
        "autoattack_acc": None if autoattack is None else accuracy_at(autoattack, attack.headline_eps),
        "certified_acc": _curve(attack.epsilons, attack.certified_accuracy),
        "certified_acc_certify_points": _curve(certify.epsilons, certify.certified_accuracy),
        "robust_acc": _curve(attack.epsilons, attack.robust_accuracy),
        "per_attack_robust_acc": per_attack,
        "points": {
            "attacked": attack.n_points,
            "certified": certify.points,
            "test": None if train is None else train.test_examples,
        },
    }


def _lipschitz(certify: CertifySummary, verify: VerifySummary) -> dict[str, float]:
    upper, lower = certify.lipschitz_upper_bound, verify.lower_bound
    return {
        "upper_whole_map": float(upper.whole_map),
        "upper_max_per_logit": float(upper.max_per_logit),
        "lower_whole_map": float(lower.whole_map),
        "lower_max_per_logit": float(lower.max_per_logit),
    }


def _explain(explain: ExplainSummary) -> dict[str, Any]:
    """Faithfulness, stability, alignment and counterfactual figures of the explain stage (its points)."""
    return {
        "points": int(explain.points),
        "mu_fidelity": explain.mu_fidelity,
        "deletion_auc": explain.deletion_auc,
        "insertion_auc": explain.insertion_auc,
        "max_sensitivity": explain.max_sensitivity,
        "alignment": dict(explain.alignment),
        "counterfactual_over_radius": explain.counterfactual_over_radius,
        "counterfactual_over_min_adversarial": explain.counterfactual_over_min_adversarial,
        "counterfactual_violations": len(explain.counterfactual_violations),
    }


def _costs(certify: CertifySummary, train: TrainSummary | None) -> dict[str, Any]:
    return {
        "train_seconds": None if train is None else float(train.timing.train_seconds),
        "peak_memory_mb": None if train is None else float(train.peak_memory_mb["process_rss"]),
        "parameter_count": int(train.parameter_count if train is not None else certify.parameter_count),
    }
