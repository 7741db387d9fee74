"""The certify, attack and verify stages, one process per (stage, dataset).

A stage evaluates every trained model of the dataset in the profile (models x seeds).
Each model's outputs live in ``Layout.stage_dir(stage, key)`` (``<stage>.npz`` per-point
arrays and ``summary.json``), and the dataset's summaries in
``<metrics>/<stage>/<dataset>.json`` (git-tracked; :class:`~lipbench.summaries.StageMetrics`).
Every summary carries a fingerprint of its inputs (weights and upstream files, settings,
lipbench's source). Each model's outputs are also kept in ``Layout.reuse_dir`` (outside
DVC's outputs, which DVC removes before it reruns a stage, so that the stage stays
restorable from DVC's run-cache): when DVC reruns a stage, models whose fingerprint is
unchanged are copied back from there, not recomputed, so adding one model costs one
model's evaluation. A clone restored from DVC's cache has no such copies: they are then
taken from the stage's output as ``dvc.lock`` last recorded it (:mod:`lipbench.dvc_cache`). Models run in
``evaluate.workers`` parallel processes (spawned, one torch thread each) or in-process when
``workers`` is 1. The per-model work is in :mod:`lipbench.evaluate.model_stages`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch
from tqdm import tqdm

from lipbench.data.base import sha256_file
from lipbench.devices import resolve_device
from lipbench.dvc_cache import LockedOutput, locked_output
from lipbench.environment import environment_record, source_fingerprint
from lipbench.evaluate.model_stages import STAGE_WORK, GivenModel
from lipbench.evaluate.settings import EvaluationSettings, evaluation_settings
from lipbench.io import remove_unlisted_runs, replace_folder
from lipbench.profiles import Profile, load_profile
from lipbench.progress import tqdm_disable
from lipbench.records import without_measurements
from lipbench.runs import EVALUATION_STAGES, Layout, RunKey, run_keys
from lipbench.summaries import (
    STAGE_SUMMARIES,
    StageMetrics,
    StageSummary,
    SummaryError,
    read_summary,
    write_summary,
)
from lipbench.train import config_from_profile

__all__ = ["model_keys", "run_stage", "evaluate_one", "fingerprint", "VerificationFailed"]

_UPSTREAM = {"certify": (), "attack": ("certify",), "verify": ("certify", "attack")}


class VerificationFailed(Exception):
    """The soundness gate failed; the message lists every failure."""


def model_keys(profile: Profile, dataset: str) -> list[RunKey]:
    """The dataset's trained models in the profile, each checked before any work."""
    profile.check_member("dataset", dataset)
    layout = Layout.of(profile)
    keys = run_keys(profile, dataset)
    for key in keys:
        config_from_profile(profile, key)  # names, method params, recipe
        if not layout.weights(key).is_file():
            raise FileNotFoundError(f"{layout.weights(key)} does not exist; train it first (dvc repro, or lipbench train)")
    return keys


def fingerprint(profile: Profile, stage: str, key: RunKey, settings: EvaluationSettings) -> str:
    """Identifies a model's stage inputs: weights, upstream outputs, settings, lipbench's source."""
    layout = Layout.of(profile)
    inputs = [sha256_file(layout.weights(key))[:16]]
    inputs += [sha256_file(layout.stage_arrays(upstream, key))[:16] for upstream in _UPSTREAM[stage]]
    payload = json.dumps([stage, inputs, settings.for_stage(stage), source_fingerprint()], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def evaluate_one(
    profile_path: str, stage: str, key: RunKey, run_fingerprint: str, progress: bool = False, given: GivenModel | None = None
) -> StageSummary:
    """One model's stage work; writes ``summary.json`` last (it marks the outputs complete).
    ``progress``: bars for the model's attacks (tqdm; off when the output is not a terminal);
    ``given``: a model (and its bound) to evaluate instead of the key's weights file."""
    started = time.perf_counter()
    profile = load_profile(profile_path)
    settings = evaluation_settings(profile, key.dataset)
    layout = Layout.of(profile)
    layout.stage_dir(stage, key).mkdir(parents=True, exist_ok=True)
    summary = STAGE_WORK[stage](profile, key, settings, run_fingerprint, progress, given)
    summary = dataclasses.replace(
        summary,
        seconds=time.perf_counter() - started,
        environment=environment_record(resolve_device(settings.device), key.seed),  # same device: held per process
    )
    write_summary(layout.stage_summary(stage, key), without_measurements(summary))  # the DVC output
    return summary


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _recorded(layout: Layout, stage: str, dataset: str) -> StageMetrics | None:
    """The stage's git-tracked record of the dataset as the last run wrote it, if readable."""
    try:
        return StageMetrics.read(layout.stage_metrics(stage, dataset))
    except (FileNotFoundError, SummaryError):
        return None


def _reusable(
    layout: Layout, stage: str, key: RunKey, run_fingerprint: str, recorded: StageMetrics | None
) -> StageSummary | None:
    """The model's last summary when its inputs are unchanged (same fingerprint), with its
    outputs copied back into the stage's output folder; None otherwise. Its measurements
    (seconds, environment), which the output does not hold, come from ``recorded`` when that
    record describes the same inputs."""
    kept = layout.reuse_dir(stage, key)
    path = kept / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = read_summary(path, STAGE_SUMMARIES[stage])
    except SummaryError:  # written by an older lipbench: recompute
        return None
    if summary.fingerprint != run_fingerprint:
        return None
    replace_folder(kept, layout.stage_dir(stage, key))
    measured = recorded.summaries.get(RunKey(key.dataset, key.model, key.seed)) if recorded and key.external is None else None
    if measured is not None and measured.fingerprint == run_fingerprint:
        summary = measured
    return dataclasses.replace(summary, reused=True)


def _keep_locked(layout: Layout, stage: str, key: RunKey, run_fingerprint: str, locked: LockedOutput | None) -> bool:
    """Copy the model's outputs as DVC last locked the stage's output into its reuse folder
    when their fingerprint matches (a clone restored from DVC's cache has no kept copies)."""
    output = layout.stage_dataset_dir(stage, key.dataset)
    if locked is None or not layout.stage_dir(stage, key).is_relative_to(output):
        return False
    prefix = layout.stage_dir(stage, key).relative_to(output).as_posix()
    summary_file = locked.cached(f"{prefix}/summary.json")
    if summary_file is None:
        return False
    try:
        summary = read_summary(summary_file, STAGE_SUMMARIES[stage])
    except SummaryError:
        return False
    if summary.fingerprint != run_fingerprint:
        return False
    return locked.copy_folder(prefix, layout.reuse_dir(stage, key))


def _done(bar: tqdm, stage: str, key: RunKey, summary: StageSummary) -> None:
    """Progress per model: the bar on a terminal, else one line (DVC logs, CI)."""
    if bar.disable:
        print(f"lipbench {stage}: {key.label} done in {summary.seconds:.1f} s", file=sys.stderr, flush=True)
    else:
        bar.set_postfix_str(key.label)
        bar.update()


def _compute(profile: Profile, stage: str, pending: list[tuple[RunKey, str]], workers: int, bar: tqdm) -> dict:
    """Run the pending models, in ``workers`` processes when there are several (then without
    the per-attack bars, which would interleave)."""
    done: dict[RunKey, StageSummary] = {}
    if workers > 1 and len(pending) > 1:
        threads = max(1, (torch.get_num_threads() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(evaluate_one, str(profile.path), stage, key, fp): key for key, fp in pending}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                _done(bar, stage, futures[future], done[futures[future]])
    else:
        for key, run_fingerprint in pending:
            done[key] = evaluate_one(str(profile.path), stage, key, run_fingerprint, progress=not bar.disable)
            _done(bar, stage, key, done[key])
    return done


def run_stage(profile: Profile, stage: str, dataset: str, progress: bool = True) -> StageMetrics:
    """Run ``stage`` for every model of the dataset; returns the metrics written to the dataset file.

    Raises :class:`VerificationFailed` after writing the records if a verification failed.
    """
    if stage not in EVALUATION_STAGES:
        raise ValueError(f"unknown evaluation stage {stage!r}; stages: {', '.join(EVALUATION_STAGES)}")
    started = time.perf_counter()
    settings = evaluation_settings(profile, dataset)
    layout = Layout.of(profile)
    keys = model_keys(profile, dataset)
    for key in keys:
        for upstream in _UPSTREAM[stage]:
            if not layout.stage_summary(upstream, key).is_file():
                raise FileNotFoundError(f"{key.label}: run the {upstream} stage first (lipbench {upstream} --dataset {dataset})")
    fingerprints = {key: fingerprint(profile, stage, key, settings) for key in keys}
    recorded = _recorded(layout, stage, dataset)
    reused = {key: _reusable(layout, stage, key, fingerprints[key], recorded) for key in keys}
    if None in reused.values():  # not kept here (a clone restored from DVC's cache): the lock, read once
        locked = locked_output(profile.path.parent / "dvc.lock", f"{stage}@{dataset}", layout.stage_dataset_dir(stage, dataset))
        for key in [key for key, summary in reused.items() if summary is None]:
            if _keep_locked(layout, stage, key, fingerprints[key], locked):
                reused[key] = _reusable(layout, stage, key, fingerprints[key], recorded)
    summaries: dict[RunKey, StageSummary] = {key: summary for key, summary in reused.items() if summary is not None}
    pending = [(key, fingerprints[key]) for key in keys if key not in summaries]
    bar = tqdm(total=len(pending), desc=f"{stage} {dataset}", unit="model", disable=tqdm_disable(progress and bool(pending)))
    summaries |= _compute(profile, stage, pending, settings.workers, bar)
    bar.close()
    for key, _ in pending:
        replace_folder(layout.stage_dir(stage, key), layout.reuse_dir(stage, key))
    _remove_stale(layout, stage, dataset, keys)
    metrics = StageMetrics(
        profile=profile.name,
        stage=stage,
        dataset=dataset,
        summaries={key: summaries[key] for key in keys},
        recomputed=[key.label for key, _ in pending],
        seconds=time.perf_counter() - started,
    )
    metrics.write(layout.stage_metrics(stage, dataset))
    failures = [message for key in keys for message in getattr(summaries[key], "failures", [])]
    if failures:
        raise VerificationFailed("\n".join(failures))
    return metrics


def _remove_stale(layout: Layout, stage: str, dataset: str, keys: list[RunKey]) -> None:
    """Drop outputs (and kept copies) of models no longer in the profile."""
    for folder_of in (layout.stage_dir, layout.reuse_dir):
        root = folder_of(stage, RunKey(dataset, "x", 0)).parent.parent  # one folder per model, then per seed
        remove_unlisted_runs(root, {folder_of(stage, key) for key in keys})
