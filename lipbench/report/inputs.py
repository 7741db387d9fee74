"""What the report reads: the pipeline's outputs, located, checked up front and loaded typed.

Only stage outputs are read (summaries, per-point ``.npz`` arrays, prepared test inputs),
never models. :func:`check_inputs` names every missing or outdated file and the command
that produces it before any expensive work starts; :func:`read_inputs` then loads every
summary once into a :class:`ReportInputs`. Light module: no torch.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from lipbench.arrays import ArraysError, AttackArrays, CertifyArrays
from lipbench.profiles import Profile
from lipbench.runs import MODEL_STAGES, Layout, RunKey, run_keys
from lipbench.summaries import (
    AttackSummary,
    CertifySummary,
    ExplainSummary,
    StageMetrics,
    SummaryError,
    TrainSummary,
    VerifySummary,
    read_summary,
)

__all__ = ["ReportInputError", "ReportInputs", "check_inputs", "read_inputs", "load_test_inputs", "stage_command"]

_MANIFEST = "manifest.json"  # lipbench.data.base.MANIFEST_NAME (a test keeps them equal)


class ReportInputError(FileNotFoundError):
    """A pipeline output the report needs is missing; the message says which stage makes it."""


def stage_command(profile: Profile, stage: str, dataset: str, key: RunKey | None = None) -> str:
    """The command that produces a stage's outputs (a model's, for ``train``)."""
    params = shlex.quote(str(profile.path))
    if stage == "train" and key is not None:
        return f"lipbench train --params {params} --dataset {dataset} --model {key.model} --seed {key.seed}"
    return f"lipbench {stage} --params {params} --dataset {dataset}"


def _problems(profile: Profile, dataset: str) -> list[str]:
    layout = Layout.of(profile)
    problems: list[str] = []

    def missing(what: str, stage: str, key: RunKey | None = None) -> None:
        problems.append(f"{what} ({stage} stage): run `dvc repro` or `{stage_command(profile, stage, dataset, key)}`")

    if not (layout.prepared(dataset) / _MANIFEST).is_file():
        missing(f"{layout.prepared(dataset) / _MANIFEST} is missing", "prepare")
    stages = {}
    for stage in MODEL_STAGES:
        path = layout.stage_metrics(stage, dataset)
        try:
            stages[stage] = StageMetrics.read(path)
        except FileNotFoundError:
            missing(f"{path} is missing", stage)
        except SummaryError as error:
            missing(str(error), stage)
    for key in run_keys(profile, dataset):
        try:
            read_summary(layout.train_summary(key), TrainSummary)
        except (FileNotFoundError, SummaryError) as error:
            missing(f"{layout.train_summary(key)}: {error.__class__.__name__}: {error}", "train", key)
        for stage, metrics in stages.items():
            if key not in metrics.summaries:
                missing(f"{layout.stage_metrics(stage, dataset)} has no entry for {key.label}", stage)
        for stage, loader in (("certify", CertifyArrays.load), ("attack", AttackArrays.load)):
            path = layout.stage_arrays(stage, key)
            try:
                arrays = loader(path)
            except (FileNotFoundError, ArraysError) as error:
                missing(str(error), stage)
                continue
            if stage == "certify" and arrays.gradients.ndim == 2 and arrays.gradients.shape[1] == 2 and not arrays.has_grid:
                missing(f"{path} lacks the arrays grid_values (2-D inputs: the level-set figure needs them)", stage)
    return problems


def check_inputs(profile: Profile) -> None:
    """Raise :class:`ReportInputError` listing every missing input and the stage to run."""
    problems = [problem for dataset in profile.datasets for problem in _problems(profile, dataset)]
    if problems:
        shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
        raise ReportInputError(
            f"the report of profile {profile.name!r} ({profile.path}) cannot be built, inputs are missing:\n  "
            + "\n  ".join(shown)
        )


@dataclass
class ReportInputs:
    """Every summary of a profile, read once: train summaries per run, stage metrics per
    (stage, dataset); per-point arrays load on demand (and once)."""

    profile: Profile
    train: dict[RunKey, TrainSummary]
    stages: dict[tuple[str, str], StageMetrics]
    _arrays: dict[tuple[str, RunKey], Any] = field(default_factory=dict, repr=False)

    @cached_property
    def layout(self) -> Layout:
        return Layout.of(self.profile)

    def keys(self, dataset: str | None = None) -> list[RunKey]:
        return run_keys(self.profile, dataset)

    def certify(self, key: RunKey) -> CertifySummary:
        return self.stages["certify", key.dataset].summary(key)

    def attack(self, key: RunKey) -> AttackSummary:
        return self.stages["attack", key.dataset].summary(key)

    def verify(self, key: RunKey) -> VerifySummary:
        return self.stages["verify", key.dataset].summary(key)

    def explain(self, key: RunKey) -> ExplainSummary:
        return self.stages["explain", key.dataset].summary(key)

    def certify_arrays(self, key: RunKey) -> CertifyArrays:
        if ("certify", key) not in self._arrays:
            self._arrays["certify", key] = CertifyArrays.load(self.layout.stage_arrays("certify", key))
        return self._arrays["certify", key]

    def attack_arrays(self, key: RunKey) -> AttackArrays:
        if ("attack", key) not in self._arrays:
            self._arrays["attack", key] = AttackArrays.load(self.layout.stage_arrays("attack", key))
        return self._arrays["attack", key]

    def headline_eps(self, dataset: str) -> float:
        return self.attack(self.keys(dataset)[0]).headline_eps

    def is_image_dataset(self, dataset: str) -> bool:
        """True when the dataset's inputs are images (C, H, W), judged from the stored gradients."""
        return self.certify_arrays(self.keys(dataset)[0]).gradients.ndim == 4


def read_inputs(profile: Profile, check: bool = True) -> ReportInputs:
    """Check every input (:func:`check_inputs`; ``check=False`` where the caller already
    did, e.g. the report notebooks), then read every summary once."""
    if check:
        check_inputs(profile)
    layout = Layout.of(profile)
    train = {key: read_summary(layout.train_summary(key), TrainSummary) for key in run_keys(profile)}
    stages = {
        (stage, dataset): StageMetrics.read(layout.stage_metrics(stage, dataset))
        for stage in MODEL_STAGES
        for dataset in profile.datasets
    }
    return ReportInputs(profile, train, stages)


def load_test_inputs(profile: Profile, dataset: str, count: int) -> tuple[np.ndarray, np.ndarray, Any]:
    """The first ``count`` test points ``(x, y)`` (the evaluated ones, same order) and the dataset info."""
    from lipbench.data import load_dataset, take_tensors  # torch: only the image figures need it

    splits = load_dataset(dataset, profile.path_of("data"), profile.prepare_params(dataset))
    x, y = take_tensors(splits.test, count)
    return x.numpy(), y.numpy(), splits.info
