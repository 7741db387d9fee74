"""The ``train`` stage: every model of a dataset in one process (DVC's ``train@<dataset>``).

Models train in ``train.workers`` processes at a time (spawned; on CPU one torch thread
each, so a model's bytes do not depend on the machine's core count) or in this process
when ``workers`` is 1 (then with torch's default threads). Starting one process per model
cost more than training a quick-profile model (torch and its compiler stack import in
about 3 s).

Each trained model is also kept in ``Layout.reuse_dir("train", key)`` (weights, summary,
history) with the fingerprint of everything that decides its bytes: the run's config, the
prepared data, lipbench's source, torch's version, the device kind and the torch threads.
DVC removes the stage's output folder before it reruns the stage; unchanged models are then
copied back, not retrained, so changing one model's parameters retrains one model.
``lipbench train --model M --seed S`` trains one model into the same places with the same
threads (``lipbench launch`` fans a train stage out into such jobs, then runs the stage,
which finds them kept). A clone restored from DVC's cache has no kept copies: a model is
then taken from the stage's output as ``dvc.lock`` last recorded it (its fingerprint is
part of that output), with its git-tracked summary and history (:mod:`lipbench.dvc_cache`).
"""

from __future__ import annotations

import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from tqdm import tqdm

from lipbench.data import DatasetSplits, load_dataset
from lipbench.dvc_cache import LockedOutput, locked_output
from lipbench.io import copy_file_atomic, remove_unlisted_runs, write_text_atomic
from lipbench.profiles import Profile, load_profile
from lipbench.progress import tqdm_disable
from lipbench.runs import Layout, RunKey, run_keys
from lipbench.summaries import SummaryError, TrainSummary, read_summary
from lipbench.train.checkpoint import data_fingerprint, run_fingerprint
from lipbench.train.run import config_from_profile, run_training

__all__ = ["training_threads", "training_fingerprint", "train_kept", "reuse_kept", "reuse_locked", "run_train_stage"]

_FINGERPRINT = "fingerprint.txt"


def training_threads(profile: Profile) -> int | None:
    """Torch threads of one training: 1 with several workers, else None (torch's default)."""
    return 1 if profile.train_workers() > 1 else None


def _device_kind(name: str) -> str:
    """``cpu`` or ``cuda`` (which GPU does not change the bytes; none is claimed here)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name).type


def training_fingerprint(profile: Profile, key: RunKey, splits: DatasetSplits | None = None) -> str:
    """What decides a trained model's bytes (see the module docstring; the checkpoint's
    fingerprint), under this process's torch threads: set :func:`training_threads` first.
    ``splits``: the key's prepared dataset when already loaded."""
    config = config_from_profile(profile, key)
    if splits is None:
        splits = load_dataset(key.dataset, profile.path_of("data"), profile.prepare_params(key.dataset))
    return run_fingerprint(config, data_fingerprint(splits), _device_kind(profile.device()))


def _kept_files(layout: Layout, key: RunKey) -> dict[Path, Path]:
    """Each output of a trained model -> its copy in the reuse folder."""
    kept = layout.reuse_dir("train", key)
    return {
        layout.weights(key): kept / "weights.safetensors",
        layout.train_summary(key): kept / "metrics.json",
        layout.train_history(key): kept / "history.json",
    }


def _mark(layout: Layout, key: RunKey, fingerprint: str) -> None:
    """The fingerprint beside the weights, in DVC's output (restorable from its cache)."""
    write_text_atomic(layout.model_dir(key) / _FINGERPRINT, fingerprint + "\n")


def keep(layout: Layout, key: RunKey, fingerprint: str) -> None:
    """Copy a freshly trained model's outputs into its reuse folder; the fingerprint last."""
    _mark(layout, key, fingerprint)
    kept = layout.reuse_dir("train", key)
    (kept / _FINGERPRINT).unlink(missing_ok=True)
    for output, copy in _kept_files(layout, key).items():
        copy_file_atomic(output, copy)
    write_text_atomic(kept / _FINGERPRINT, fingerprint + "\n")


def reuse_kept(layout: Layout, key: RunKey, fingerprint: str) -> TrainSummary | None:
    """The kept model's summary, its outputs copied back, when its fingerprint matches; else None."""
    kept = layout.reuse_dir("train", key)
    marker = kept / _FINGERPRINT
    if not marker.is_file() or marker.read_text().strip() != fingerprint:
        return None
    files = _kept_files(layout, key)
    if not all(copy.is_file() for copy in files.values()):
        return None
    try:
        summary = read_summary(files[layout.train_summary(key)], TrainSummary)
    except SummaryError:  # written by an older lipbench: retrain
        return None
    for output, copy in files.items():
        copy_file_atomic(copy, output)
    _mark(layout, key, fingerprint)
    return summary


def _locked_models(profile: Profile, dataset: str) -> LockedOutput | None:
    """The dataset's model folder as the profile's ``dvc.lock`` last recorded it."""
    output = Layout.of(profile).models_dataset_dir(dataset)
    return locked_output(profile.path.parent / "dvc.lock", f"train@{dataset}", output)


def _describes(summary: TrainSummary, profile: Profile, key: RunKey) -> bool:
    """Whether the git-tracked ``summary`` records ``key`` as the profile configures it now
    (DVC's run-cache restores weights without it: the report stage repairs such records)."""
    config = json.loads(json.dumps(config_from_profile(profile, key).as_dict()))
    recorded = {"dataset": summary.dataset, "model": summary.model, "seed": summary.seed, "method": summary.method}
    recorded |= {"architecture": summary.architecture, "method_params": summary.method_params, "recipe": summary.recipe}
    return all(config[name] == value for name, value in recorded.items())


def reuse_locked(profile: Profile, key: RunKey, fingerprint: str, locked: LockedOutput | None) -> TrainSummary | None:
    """The model as DVC last locked the stage's output, when its fingerprint matches and its
    git-tracked summary and history record it: copied back, kept and returned; else None."""
    if locked is None:
        return None
    layout = Layout.of(profile)
    prefix = layout.model_dir(key).relative_to(layout.models_dataset_dir(key.dataset)).as_posix()
    marker = locked.cached(f"{prefix}/{_FINGERPRINT}")
    weights = locked.cached(f"{prefix}/{layout.weights(key).name}")
    if marker is None or weights is None or marker.read_text().strip() != fingerprint:
        return None
    if not layout.train_history(key).is_file() or not layout.train_summary(key).is_file():
        return None
    try:
        summary = read_summary(layout.train_summary(key), TrainSummary)
    except SummaryError:
        return None
    if not _describes(summary, profile, key):
        return None
    copy_file_atomic(weights, layout.weights(key))
    keep(layout, key, fingerprint)
    return summary


def train_kept(profile_path: str, key: RunKey, progress: bool = False, look_in_lock: bool = True) -> TrainSummary:
    """Train one model into the profile's layout and keep it for reuse (one process: a
    worker of the stage or ``lipbench train --model M --seed S``). ``look_in_lock``: also look
    for it in DVC's last locked output (the stage did before it handed the model to a worker)."""
    profile = load_profile(profile_path)
    threads = training_threads(profile)
    if threads is not None:
        torch.set_num_threads(threads)
    fingerprint = training_fingerprint(profile, key)
    layout = Layout.of(profile)
    summary = reuse_kept(layout, key, fingerprint)
    if summary is None and look_in_lock:
        summary = reuse_locked(profile, key, fingerprint, _locked_models(profile, key.dataset))
    if summary is not None:
        return summary
    summary = run_training(profile, key, progress=progress)
    keep(layout, key, fingerprint)
    return summary


def _report(bar: tqdm, key: RunKey, summary: TrainSummary, reused: bool) -> None:
    """Progress per model: the bar on a terminal, else one line (DVC logs, CI)."""
    if bar.disable:
        how = "reused" if reused else f"test accuracy {summary.test_accuracy:.4f} in {summary.timing.train_seconds:.1f} s"
        print(f"lipbench train: {key.label}: {how}", file=sys.stderr, flush=True)
    else:
        bar.set_postfix_str(key.label)
        bar.update()


def _train_pending(profile: Profile, pending: list[RunKey], bar: tqdm) -> dict[RunKey, TrainSummary]:
    """Train ``pending`` in ``train.workers`` spawned processes, or here with one worker."""
    workers = profile.train_workers()
    done: dict[RunKey, TrainSummary] = {}
    if workers == 1:
        for key in pending:
            done[key] = train_kept(str(profile.path), key, progress=not bar.disable, look_in_lock=False)
            _report(bar, key, done[key], reused=False)
        return done
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(pending)), mp_context=context) as pool:
        futures = {pool.submit(train_kept, str(profile.path), key, look_in_lock=False): key for key in pending}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            _report(bar, futures[future], done[futures[future]], reused=False)
    return done


def run_train_stage(profile: Profile, dataset: str, progress: bool = True) -> dict[RunKey, TrainSummary]:
    """Train (or reuse) every model of ``dataset`` in the profile; returns their summaries in
    profile order. Every run is resolved before any training starts."""
    profile.check_member("dataset", dataset)
    layout = Layout.of(profile)
    keys = run_keys(profile, dataset)
    threads = training_threads(profile)
    if threads is not None:  # this process computes the fingerprints the workers will match
        torch.set_num_threads(threads)
    splits = load_dataset(dataset, profile.path_of("data"), profile.prepare_params(dataset))
    # every run resolved (names, method parameters, recipe) before any work: a bad one raises here
    fingerprints = {key: training_fingerprint(profile, key, splits) for key in keys}
    reused = {key: reuse_kept(layout, key, fingerprints[key]) for key in keys}
    if None in reused.values():  # not kept here (a clone restored from DVC's cache): the lock, read once
        locked = _locked_models(profile, dataset)
        reused = {key: summary or reuse_locked(profile, key, fingerprints[key], locked) for key, summary in reused.items()}
    summaries = {key: summary for key, summary in reused.items() if summary is not None}
    pending = [key for key in keys if key not in summaries]
    bar = tqdm(total=len(keys), desc=f"train {dataset}", unit="model", disable=tqdm_disable(progress))
    for key in keys:
        if key in summaries:
            _report(bar, key, summaries[key], reused=True)
    if pending:
        summaries |= _train_pending(profile, pending, bar)
    bar.close()
    _remove_stale(layout, dataset, keys)
    return {key: summaries[key] for key in keys}


def _remove_stale(layout: Layout, dataset: str, keys: list[RunKey]) -> None:
    """Drop the model folders, kept copies, histories and records of models no longer in the profile."""
    any_key = RunKey(dataset, "x", 0)
    folders_of = (
        layout.model_dir,
        lambda key: layout.reuse_dir("train", key),
        lambda key: layout.train_history(key).parent,
        layout.train_metrics_dir,
    )
    for folder_of in folders_of:
        remove_unlisted_runs(folder_of(any_key).parent.parent, {folder_of(key) for key in keys})
