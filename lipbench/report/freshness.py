"""Records DVC does not restore: make the git-tracked stage records agree with the outputs.

The stages write their records (``<metrics>/<stage>/<dataset>.json`` and, per run,
``<metrics>/train/.../metrics.json``) beside their DVC outputs, undeclared: git-tracked
outputs would switch DVC's run-cache off. When DVC restores a stage from its run-cache
(``dvc exp run -S ...`` back to a value that ran before, a clone with the cache), it restores
the outputs but not these records, which may then describe another run. Before the report
reads anything:

* evaluation stages: each model's ``summary.json`` in the stage's output folder (restored with
  it) is the truth; a dataset record whose summaries differ from them is rewritten from them
  (``recomputed``: none; the outputs hold no measurements, so its seconds read 0 and its
  environment records are empty), and the report says so;
* training: the report keeps each training record it publishes in a local store keyed by the
  sha256 of its weights file (``<data>/train_records/<sha256>/``, outside DVC and git). A record
  whose method parameters or recipe disagree with the profile is replaced by the stored record
  of the weights DVC restored, or, where this workspace never published one, refused, naming
  the commands that rerun the stage.

Light module: no torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lipbench.io import write_text_atomic
from lipbench.profiles import Profile
from lipbench.runs import MODEL_STAGES, Layout, RunKey, run_keys
from lipbench.summaries import STAGE_SUMMARIES, StageMetrics, TrainSummary, read_summary

__all__ = ["StaleRecordError", "refresh_stage_records", "refresh_train_records", "record_store"]


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
        for stage in MODEL_STAGES:
            path = layout.stage_metrics(stage, dataset)
            fresh = _fresh_metrics(layout, stage, dataset, StageMetrics.read(path))
            if fresh is not None:
                fresh.write(path)
                notes.append(f"{path} described other outputs (DVC restored the stage from its run-cache): rewritten from them")
    return notes


def _disagreements(wanted: Mapping[str, Any], recorded: Mapping[str, Any]) -> list[str]:
    differing = [name for name, value in wanted.items() if recorded.get(name) != value]
    return [f"{name}: params {wanted[name]!r}, record {recorded.get(name)!r}" for name in differing]


def _differences(profile: Profile, key: RunKey, record: Path) -> list[str]:
    """How the training record ``record`` disagrees with the profile's recipe and parameters."""
    summary = read_summary(record, TrainSummary)
    train = profile.params.get("train", {}).get(key.dataset, {})
    recipe = _disagreements(train.get("recipe") or {}, summary.recipe)
    params = dict(train.get(key.model) or {})
    method = _disagreements({"method": params.pop("method", key.model)}, {"method": summary.method})  # a variant's method
    if "architecture" in params:  # the model's own architecture (layer families)
        method += _disagreements({"architecture": params.pop("architecture")}, {"architecture": summary.architecture})
    return recipe + method + _disagreements(params, summary.method_params)


def record_store(profile: Profile, layout: Layout, key: RunKey) -> Path | None:
    """Where the report keeps the training record of ``key``'s current weights file (None
    without a weights file: nothing to key it by)."""
    weights = layout.weights(key)
    if not weights.is_file():
        return None
    return profile.path_of("data") / "train_records" / hashlib.sha256(weights.read_bytes()).hexdigest()


def _record_files(layout: Layout, key: RunKey) -> tuple[Path, Path]:
    return layout.train_summary(key), layout.train_history(key)


def _refresh_train_record(profile: Profile, layout: Layout, key: RunKey) -> str | None:
    """Store an agreeing record (None); replace a disagreeing one by the stored record of the
    same weights (a note); raise :class:`StaleRecordError` when there is none."""
    store, files = record_store(profile, layout, key), _record_files(layout, key)
    differences = _differences(profile, key, files[0])
    if not differences:
        if store is not None and not (store / files[0].name).is_file():
            for path in reversed(files):  # the record last: its presence marks a complete entry
                write_text_atomic(store / path.name, path.read_text(encoding="utf-8"))
        return None
    if store is not None and (store / files[0].name).is_file() and not _differences(profile, key, store / files[0].name):
        for path in files:
            write_text_atomic(path, (store / path.name).read_text(encoding="utf-8"))
        return f"{files[0]} described another run (DVC restored the stage from its run-cache): replaced by {store}"
    stage = _train_stage(profile, key)
    raise StaleRecordError(
        f"{files[0]} describes another run than the profile's ({'; '.join(differences)}): DVC restored "
        f"{stage} from its run-cache, which does not restore this git-tracked record, and this workspace "
        f"never published the record of the restored weights; rerun the stage: `dvc repro --force {stage}` "
        "(or `dvc exp run --no-run-cache ...`)"
    )


def refresh_train_records(profile: Profile) -> list[str]:
    """Make every training record agree with the weights DVC restored (see the module
    docstring); return one line per replaced record, raise :class:`StaleRecordError` where
    no stored record can replace a disagreeing one."""
    layout = Layout.of(profile)
    notes = [_refresh_train_record(profile, layout, key) for key in run_keys(profile)]
    return [note for note in notes if note is not None]


def _train_stage(profile: Profile, key: RunKey) -> str:
    pipeline = profile.path.parent / "dvc.yaml"
    return f"{pipeline}:train@{key.dataset}"
