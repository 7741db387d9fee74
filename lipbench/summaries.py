"""The schema of every stage's summary: one dataclass per stage, with ``to_json`` / ``from_json``.

Stages write these (train: ``metrics.json``; certify, attack, verify: ``summary.json`` per
model and the per-dataset ``<metrics>/<stage>/<dataset>.json`` holding every model's);
the report, the leaderboard and the CLI read them back through :func:`read_summary` and
:class:`StageMetrics`, never by string keys. JSON keys are the field names; nested
records are objects. A file missing a field (written by an older lipbench) is refused
with a :class:`SummaryError` naming the file, the field and the fix. Light module: no
torch, no numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from lipbench.io import read_json, write_json_atomic
from lipbench.records import Record, SummaryError
from lipbench.runs import RunKey

__all__ = [
    "SummaryError",
    "Reference",
    "ModelDescription",
    "TrainTiming",
    "TrainSummary",
    "LayerBoundRecord",
    "UpperBoundRecord",
    "LowerBoundRecord",
    "CertifySummary",
    "DeepFoolCurve",
    "AttackSummary",
    "LayerCheck",
    "VerifySummary",
    "ExplainSummary",
    "StageMetrics",
    "STAGE_SUMMARIES",
    "read_summary",
    "write_summary",
]

S = TypeVar("S")


class _Keyed(Record):
    """A summary of one run: ``dataset``, ``model``, ``seed`` (and ``external``) fields."""

    dataset: str
    model: str
    seed: int
    external: str | None

    @property
    def key(self) -> RunKey:
        return RunKey(self.dataset, self.model, self.seed, self.external)


# ----------------------------------------------------------------------------- train


@dataclass(frozen=True)
class Reference(Record):
    """Where a method comes from (leaderboard fields)."""

    link: str = ""
    authors: str = ""
    venue: str = ""


@dataclass(frozen=True)
class ModelDescription(Record):
    """What a model is: its method, the paper's name for it, its layer kit and architecture."""

    method: str
    paper_name: str
    kit: str
    constrained: bool
    architecture: str
    reference: Reference = field(default_factory=Reference)


@dataclass(frozen=True)
class TrainTiming(Record):
    seconds_per_epoch: list[float]
    train_seconds: float
    wall_seconds: float
    resumed_from_epoch: int | None = None


@dataclass(frozen=True)
class TrainSummary(_Keyed):
    """``metrics.json`` of the train stage."""

    stage: ClassVar[str] = "train"
    dataset: str
    model: str
    seed: int
    method: str
    paper_name: str
    kit: str
    constrained: bool
    architecture: str
    reference: Reference
    method_params: dict[str, Any]
    recipe: dict[str, Any]
    epochs: int
    train_accuracy: float
    test_accuracy: float
    final_loss: float | None
    parameter_count: int
    train_examples: int
    test_examples: int
    timing: TrainTiming
    peak_memory_mb: dict[str, float]
    environment: dict[str, Any]
    external: str | None = None

    @property
    def description(self) -> ModelDescription:
        return ModelDescription(self.method, self.paper_name, self.kit, self.constrained, self.architecture, self.reference)


# ----------------------------------------------------------------------------- certify


@dataclass(frozen=True)
class LayerBoundRecord(Record):
    """One link of a chain bound: name, type, input shape, strict bound and how it was computed."""

    name: str
    type: str
    input_shape: list[int]
    bound: float
    method: str


@dataclass(frozen=True)
class UpperBoundRecord(Record):
    """Strict Lipschitz upper bounds of the logit map (whole map and per logit); for a chain
    ending in a dense layer, ``prefix`` (the bound of the chain before it) and ``pairwise``
    (``[i][j]``: the bound of the logit difference ``f_i - f_j``), else ``None``."""

    whole_map: float
    per_logit: list[float]
    max_per_logit: float
    layers: list[LayerBoundRecord] = field(default_factory=list)
    prefix: float | None = None
    pairwise: list[list[float]] | None = None


@dataclass(frozen=True)
class LowerBoundRecord(Record):
    """Empirical Lipschitz lower bounds (each attained by the model) and their sources."""

    whole_map: float
    per_logit: list[float]
    max_per_logit: float
    logit_difference: float
    sources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CertifySummary(_Keyed):
    """One model's certify stage: certified accuracy on the first ``points`` test points;
    ``certificate_counts``: how many of them each certificate (whole_map, per_logit,
    pairwise) decided."""

    stage: ClassVar[str] = "certify"
    dataset: str
    model: str
    seed: int
    fingerprint: str
    points: int
    clean_accuracy: float
    epsilons: list[float]
    certified_accuracy: list[float]
    median_certified_radius_correct: float
    lipschitz_upper_bound: UpperBoundRecord
    parameter_count: int
    certificate_counts: dict[str, int]
    seconds: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
    external: str | None = None
    reused: bool = False

    def certified_at(self, eps: float) -> float:
        return self.certified_accuracy[self.epsilons.index(eps)]


# ----------------------------------------------------------------------------- attack


@dataclass(frozen=True)
class DeepFoolCurve(Record):
    """DeepFool on more points than the attack set (the report's DeepFool curve): robust and
    certified accuracy on the same first ``points`` test points."""

    points: int
    robust_accuracy: list[float]
    certified_accuracy: list[float]


@dataclass(frozen=True)
class AttackSummary(_Keyed):
    """One model's attack stage on the first ``n_points`` test points.

    ``clean_accuracy``, ``certified_accuracy``, ``robust_accuracy`` and every
    ``per_attack_robust_accuracy`` curve are measured on these same points (at each of
    ``epsilons``), so certified <= robust <= clean must hold on them.
    """

    stage: ClassVar[str] = "attack"
    dataset: str
    model: str
    seed: int
    fingerprint: str
    headline_eps: float
    epsilons: list[float]
    attacks: list[str]
    n_points: int
    clean_accuracy: float
    robust_accuracy: list[float]
    certified_accuracy: list[float]
    per_attack_robust_accuracy: dict[str, list[float]]
    attack_success_rate: dict[str, list[float]]
    calls: dict[str, int]
    calls_unpruned: dict[str, int]
    calls_saved: int
    calls_by_eps: dict[str, list[int]]
    calls_saved_by_certificates: dict[str, int]
    calls_saved_by_smaller_eps: dict[str, int]
    certificate_violations: list[int]
    pruned: bool
    precision: str
    compiled: bool
    attack_seconds: dict[str, float]
    deepfool_curve: DeepFoolCurve | None = None
    pruned_call_ratio: list[float] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
    external: str | None = None
    reused: bool = False

    def index(self, eps: float) -> int:
        return self.epsilons.index(eps)


# ----------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class LayerCheck(Record):
    """A layer's recorded upper bound and the power-iteration lower bound found for it."""

    name: str
    type: str
    upper: float
    method: str
    lower: float | None = None


@dataclass(frozen=True)
class VerifySummary(_Keyed):
    """One model's soundness gate: every check's record and the failures (empty: verified)."""

    stage: ClassVar[str] = "verify"
    dataset: str
    model: str
    seed: int
    fingerprint: str
    label: str
    status: str
    tolerance: float
    upper_bound: UpperBoundRecord
    lower_bound: LowerBoundRecord
    layers: list[LayerCheck]
    certificate_audit: dict[str, Any]
    minimal_attack_checks: dict[str, dict[str, Any]]
    failures: list[str]
    seconds: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
    external: str | None = None
    reused: bool = False

    @property
    def verified(self) -> bool:
        return self.status == "verified"


# ----------------------------------------------------------------------------- explain


@dataclass(frozen=True)
class ExplainSummary(_Keyed):
    """One model's explain stage (:mod:`lipbench.explain.run`): means over the first ``points``
    test points (``None``: no point defined it); ``counterfactual_violations``: points whose
    counterfactual is nearer than their certified radius (impossible under a valid certificate)."""

    stage: ClassVar[str] = "explain"
    dataset: str
    model: str
    seed: int
    fingerprint: str
    points: int
    margin: str
    settings: dict[str, Any]
    fidelity_subset_size: int
    gradient_norm: float | None
    deletion_auc: float | None
    insertion_auc: float | None
    mu_fidelity: float | None
    max_sensitivity: float | None
    complexity: float | None
    sparseness: float | None
    alignment: dict[str, float | None]
    alignment_points: dict[str, int]
    counterfactual_flipped: int
    counterfactual_median_distance: float | None
    counterfactual_over_radius: float | None
    counterfactual_over_min_adversarial: float | None
    counterfactual_min_distance_minus_radius: float | None
    counterfactual_violations: list[int]
    seconds: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
    external: str | None = None
    reused: bool = False


STAGE_SUMMARIES: Mapping[str, type[_Keyed]] = {
    "train": TrainSummary,
    "certify": CertifySummary,
    "attack": AttackSummary,
    "verify": VerifySummary,
    "explain": ExplainSummary,
}
StageSummary = CertifySummary | AttackSummary | VerifySummary | ExplainSummary


def read_summary(path: str | Path, cls: type[S]) -> S:
    """A summary file, decoded as ``cls``; missing file: FileNotFoundError naming it."""
    return cls.from_json(read_json(path), str(path))  # type: ignore[attr-defined]


def write_summary(path: str | Path, summary: Record) -> None:
    write_json_atomic(path, summary.to_json())


@dataclass(frozen=True)
class StageMetrics:
    """A stage's per-dataset JSON (``<metrics>/<stage>/<dataset>.json``): every model's summary."""

    profile: str
    stage: str
    dataset: str
    summaries: dict[RunKey, StageSummary]
    recomputed: list[str]
    seconds: float

    def summary(self, key: RunKey) -> Any:
        try:
            return self.summaries[RunKey(key.dataset, key.model, key.seed)]
        except KeyError:
            raise SummaryError(f"the {self.stage} stage of {self.dataset} has no summary of {key.label}") from None

    def to_json(self) -> dict[str, Any]:
        models: dict[str, dict[str, Any]] = {}
        for key, summary in self.summaries.items():
            models.setdefault(key.model, {})[key.seed_name] = summary.to_json()
        return {
            "profile": self.profile,
            "stage": self.stage,
            "dataset": self.dataset,
            "models": models,
            "recomputed": list(self.recomputed),
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "stage metrics") -> StageMetrics:
        try:
            stage, models = data["stage"], data["models"]
            summary_type = STAGE_SUMMARIES[stage]
        except KeyError as error:
            raise SummaryError(f"{where}: not a stage metrics file (missing or unknown {error})") from None
        summaries = {}
        for seeds in models.values():
            for name, payload in seeds.items():
                summary = summary_type.from_json(payload, f"{where}: {name}")
                summaries[RunKey(summary.dataset, summary.model, summary.seed)] = summary
        return cls(data["profile"], stage, data["dataset"], summaries, list(data["recomputed"]), float(data["seconds"]))

    @classmethod
    def read(cls, path: str | Path) -> StageMetrics:
        return cls.from_json(read_json(path), str(path))

    def write(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_json())
