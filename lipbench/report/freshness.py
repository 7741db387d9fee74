"""Records DVC does not restore: make the git-tracked stage records agree with the outputs.

The stages write their records (``<metrics>/<stage>/<dataset>.json`` and, per run,
``<metrics>/train/.../metrics.json``) beside their DVC outputs, undeclared: git-tracked
outputs would switch DVC's run-cache off. When DVC restores a stage from its run-cache
(``dvc exp run -S ...`` back to a value that ran before, a clone with the cache), it restores
the outputs but not these records, which may then describe another run. Before the report
reads anything:

* evaluation stages: each model's ``summary.json`` in the stage's output folder (restored with
  it) is the truth; a dataset record whose summaries differ from them is rewritten from them
  (``recomputed``: none; ``seconds``: the models' summed seconds), and the report says so;
* training: a record whose method parameters or recipe disagree with the profile is refused,
  naming the stage to rerun (the weights file is the output DVC restored; the record is not).

Light module: no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lipbench.profiles import Profile
from lipbench.runs import Layout, RunKey, run_keys
from lipbench.summaries import STAGE_SUMMARIES, StageMetrics, TrainSummary, read_summary

__all__ = ["StaleRecordError", "refresh_stage_records", "check_train_records"]

EVALUATION_STAGES = ("certify", "attack", "verify")


class StaleRecordError(ValueError):
    """A git-tracked record describes another run than the outputs DVC restored."""


def _fresh_metrics(layout: Layout, stage: str, dataset: str, recorded: StageMetrics) -> StageMetrics | None:
    """The stage's record rebuilt from its outputs' summaries; None when it already agrees."""
    keys = list(recorded.summaries)
    summaries = {key: read_summary(layout.stage_summary(stage, key), STAGE_SUMMARIES[stage]) for key in keys}
    if all(summaries[key].fingerprint == recorded.summaries[key].fingerprint for key in keys):
        return None
    seconds = float(sum(summary.seconds for summary in summaries.values()))
    return StageMetrics(recorded.profile, stage, dataset, summaries, [], seconds)


def refresh_stage_records(profile: Profile) -> list[str]:
    """Rewrite every evaluation record that disagrees with its stage's outputs (see the
    module docstring); return one line per rewritten file."""
    layout = Layout.of(profile)
    notes = []
    for dataset in profile.datasets:
        for stage in EVALUATION_STAGES:
            path = layout.stage_metrics(stage, dataset)
            fresh = _fresh_metrics(layout, stage, dataset, StageMetrics.read(path))
            if fresh is not None:
                fresh.write(path)
                notes.append(f"{path} described other outputs (DVC restored the stage from its run-cache): rewritten from them")
    return notes


def _disagreements(wanted: Mapping[str, Any], recorded: Mapping[str, Any]) -> list[str]:
    differing = [name for name, value in wanted.items() if recorded.get(name) != value]
    return [f"{name}: params {wanted[name]!r}, record {recorded.get(name)!r}" for name in differing]


def _train_problems(profile: Profile, layout: Layout, key: RunKey) -> list[str]:
    summary = read_summary(layout.train_summary(key), TrainSummary)
    train = profile.params.get("train", {}).get(key.dataset, {})
    differences = _disagreements(train.get("recipe") or {}, summary.recipe)
    differences += _disagreements(train.get(key.model) or {}, summary.method_params)
    return [f"{layout.train_summary(key)} ({'; '.join(differences)})"] if differences else []


def check_train_records(profile: Profile) -> None:
    """Raise :class:`StaleRecordError` when a training record's recipe or method parameters
    differ from the profile's (a training stage DVC restored from its run-cache keeps the
    record of another run), naming each record and the command that rewrites it."""
    layout = Layout.of(profile)
    problems = [(key, problem) for key in run_keys(profile) for problem in _train_problems(profile, layout, key)]
    if problems:
        lines = [f"{problem}: run `dvc repro --force {_train_stage(profile, key)}`" for key, problem in problems]
        raise StaleRecordError(
            "training records describe other runs than the profile's (DVC restores a stage's outputs from its "
            "run-cache, not the git-tracked record beside them):\n  " + "\n  ".join(lines)
        )


def _train_stage(profile: Profile, key: RunKey) -> str:
    pipeline = profile.path.parent / "dvc.yaml"
    return f"{pipeline}:train@{key.dataset}-{key.model}-{key.seed}"
