"""The certify, attack and verify stages, one process per (stage, dataset).

A stage evaluates every trained model of the dataset in the profile (methods x seeds).
Each model's outputs live in ``<evaluation>/<stage>/<dataset>/<method>/seed<k>/``
(``<stage>.npz`` per-point arrays and ``summary.json``), and the dataset's headline
numbers in ``<metrics>/<stage>/<dataset>.json`` (git-tracked). Every summary carries a
fingerprint of its inputs (weights and upstream files, settings, lipbench's source): when
DVC reruns a stage, models whose fingerprint is unchanged are reused, not recomputed, so
adding one method costs one model's evaluation. Models run in ``evaluate.workers``
parallel processes (spawned, one torch thread each) or in-process when ``workers`` is 1.
Everything is measured on the exported plain model loaded from the weights file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import shutil
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lipbench.data import load_dataset, take_tensors
from lipbench.data.base import MANIFEST_NAME, prepared_dir, sha256_file
from lipbench.devices import resolve_device
from lipbench.environment import environment_record, source_fingerprint
from lipbench.evaluate.attacks import run_attack_suite
from lipbench.evaluate.certification import certify_model
from lipbench.evaluate.layout import STAGES, ModelRun, output_dir, stage_metrics_path
from lipbench.evaluate.settings import EvaluationSettings, evaluation_settings
from lipbench.evaluate.verification import verify_model
from lipbench.io import atomic_path, read_json, write_json_atomic
from lipbench.profiles import Profile, load_profile
from lipbench.progress import tqdm_disable
from lipbench.train import ModelMetadata, TrainConfig, config_from_profile, load_weights

__all__ = [
    "model_runs",
    "run_stage",
    "evaluate_one",
    "fingerprint",
    "check_weights_match",
    "VerificationFailed",
]

_UPSTREAM = {"certify": (), "attack": ("certify",), "verify": ("certify", "attack")}


class VerificationFailed(Exception):
    """The soundness gate failed; the message lists every failure."""


def model_runs(profile: Profile, dataset: str) -> list[ModelRun]:
    """The dataset's trained models in the profile, each checked before any work."""
    profile.check_member("dataset", dataset)
    runs = []
    for method in profile.models:
        for seed in profile.seeds:
            config_from_profile(profile, dataset, method, seed)  # names, method params, recipe
            weights = profile.path_of("models") / dataset / method / f"seed{seed}" / "weights.safetensors"
            if not weights.is_file():
                raise FileNotFoundError(f"{weights} does not exist; train it first (dvc repro, or lipbench train)")
            runs.append(ModelRun(dataset, method, seed, weights))
    return runs


def fingerprint(profile: Profile, stage: str, run: ModelRun, settings: EvaluationSettings) -> str:
    """Identifies a model's stage inputs: weights, upstream outputs, settings, lipbench's source."""
    inputs = [sha256_file(run.weights)[:16]]
    inputs += [sha256_file(output_dir(profile, upstream, run) / f"{upstream}.npz")[:16] for upstream in _UPSTREAM[stage]]
    payload = json.dumps([stage, inputs, settings.for_stage(stage), source_fingerprint()], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)


def check_weights_match(path: Path, metadata: ModelMetadata, config: TrainConfig, label: str) -> None:
    """``ValueError`` unless the weights file holds the dataset, method and architecture of ``config``."""
    if (metadata.dataset, metadata.method, metadata.architecture) != (config.dataset, config.method, config.architecture):
        raise ValueError(
            f"{path}: holds a {metadata.method} {metadata.architecture} model for {metadata.dataset}, but {label} "
            f"is a {config.method} {config.architecture} model; pass the matching weights file"
        )


@functools.lru_cache(maxsize=2)
def _cached_test_points(data_dir: Path, dataset: str, prepare_params: str, count: int, manifest_stamp: tuple[int, int]):
    splits = load_dataset(dataset, data_dir, json.loads(prepare_params))
    x, y = take_tensors(splits.test, count)
    return x, y, splits.info


def _test_points(profile: Profile, dataset: str, count: int):
    """The first ``count`` test points and the dataset info, read once per process: every model
    of a stage (and every stage of ``lipbench evaluate``) uses the same points. The cache key
    includes the prepared data's manifest, so re-prepared data is read again."""
    data_dir = profile.path_of("data")
    manifest = prepared_dir(data_dir, dataset) / MANIFEST_NAME
    if not manifest.is_file():  # not prepared: let the loader raise its error
        load_dataset(dataset, data_dir, profile.prepare_params(dataset))
    status = manifest.stat()
    params = json.dumps(profile.prepare_params(dataset), sort_keys=True)
    return _cached_test_points(data_dir, dataset, params, count, (status.st_ino, status.st_mtime_ns))


def _load_model_and_points(profile: Profile, run: ModelRun, settings: EvaluationSettings):
    """Load the weights (checked against the architecture and the profile's method) and
    the first ``certify_points`` test points."""
    config = config_from_profile(profile, run.dataset, run.method, run.seed)
    device = resolve_device(settings.device)
    model, metadata = load_weights(run.weights, device)
    check_weights_match(run.weights, metadata, config, f"the profile's {run.label}")
    x, y, info = _test_points(profile, run.dataset, settings.certify_points)
    return model, x.to(device), y.to(device), info


def _certify(profile: Profile, run: ModelRun, settings: EvaluationSettings, out: Path) -> dict[str, Any]:
    model, x, y, info = _load_model_and_points(profile, run, settings)
    certification = certify_model(model, info.input_shape, x, y, settings.epsilons, settings.batch_size)
    _save_arrays(out / "certify.npz", certification.arrays())
    return certification.summary() | {"parameter_count": sum(p.numel() for p in model.parameters())}


def _attack(profile: Profile, run: ModelRun, settings: EvaluationSettings, out: Path) -> dict[str, Any]:
    model, x, y, info = _load_model_and_points(profile, run, settings)
    radius = torch.from_numpy(np.load(output_dir(profile, "certify", run) / "certify.npz")["radius"])
    n = settings.attack_points
    common = dict(
        batch_size=settings.batch_size,
        progress=False,
        bounds=info.bounds,
        n_examples=16,
        precision=settings.attack_precision,
        compile_model=settings.attack_compile,
    )
    suite = run_attack_suite(
        model,
        x[:n],
        y[:n],
        settings.epsilons,
        settings.attacks,
        radius[:n],
        options=settings.attack_options,
        prune=True,
        **common,
    )
    arrays: dict[str, np.ndarray] = {
        "epsilons": np.asarray(settings.epsilons),
        "robust": suite.robust,
        "clean_correct": suite.clean_correct,
        "example_indices": suite.example_indices,
    }
    for name in suite.attacks:
        arrays[f"success_{name}"] = suite.success[name]
        arrays[f"examples_{name}"] = suite.examples[name]
    for name, norms in suite.min_norms.items():
        arrays[f"min_norm_{name}"] = norms
    summary = suite.summary()
    if "deepfool_l2" in settings.attacks and settings.deepfool_points > n:
        curve = run_attack_suite(
            model,
            x[: settings.deepfool_points],
            y[: settings.deepfool_points],
            settings.epsilons,
            ["deepfool_l2"],
            options={k: v for k, v in settings.attack_options.items() if k == "deepfool_l2"},
            **common,
        )
        arrays["min_norm_deepfool_l2_curve"] = curve.min_norms["deepfool_l2"]
        summary["deepfool_curve"] = {"points": settings.deepfool_points, "robust_accuracy": curve.robust_accuracy.tolist()}
    eps_attacks = [name for name in suite.attacks if name in suite.calls_by_eps]
    if eps_attacks:
        pruned = np.sum([suite.calls_by_eps[name] for name in eps_attacks], axis=0)
        summary["pruned_call_ratio"] = (pruned / (n * len(eps_attacks))).tolist()
    summary["per_attack_robust_accuracy"] = {
        name: (suite.clean_correct[None, :] & ~suite.success[name]).mean(axis=1).tolist() for name in suite.attacks
    }
    _save_arrays(out / "attack.npz", arrays)
    return summary


def _verify(profile: Profile, run: ModelRun, settings: EvaluationSettings, out: Path) -> dict[str, Any]:
    model, x, _, info = _load_model_and_points(profile, run, settings)
    certify_out, attack_out = output_dir(profile, "certify", run), output_dir(profile, "attack", run)
    certificates = dict(np.load(certify_out / "certify.npz"))
    upper = read_json(certify_out / "summary.json")["lipschitz_upper_bound"]
    attacks = dict(np.load(attack_out / "attack.npz"))
    attack_summary = read_json(attack_out / "summary.json")
    verify = settings.verify
    result = verify_model(
        f"{profile.name}:{run.label}",
        model,
        x,
        certificates,
        upper,
        attacks,
        attack_summary,
        info.bounds,
        ascent_steps=verify["ascent_steps"],
        audit_points=verify["audit_points"],
        audit_steps=verify["audit_steps"],
        layer_iterations=verify["layer_power_iterations"],
    )
    return result.summary()


_WORK: dict[str, Callable[[Profile, ModelRun, EvaluationSettings, Path], dict[str, Any]]] = {
    "certify": _certify,
    "attack": _attack,
    "verify": _verify,
}


def evaluate_one(profile_path: str, stage: str, run: ModelRun, key: str) -> dict[str, Any]:
    """One model's stage work; writes ``summary.json`` last (it marks the outputs complete)."""
    started = time.perf_counter()
    profile = load_profile(profile_path)
    settings = evaluation_settings(profile, run.dataset)
    out = output_dir(profile, stage, run)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"dataset": run.dataset, "model": run.method, "seed": run.seed, "fingerprint": key}
    if run.external is not None:
        summary["external"] = run.external
    summary |= _WORK[stage](profile, run, settings, out)
    summary["seconds"] = time.perf_counter() - started
    summary["environment"] = environment_record(resolve_device(settings.device), run.seed)  # same device: held per process
    write_json_atomic(out / "summary.json", summary)
    return summary


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_stage(profile: Profile, stage: str, dataset: str, progress: bool = True) -> dict[str, Any]:
    """Run ``stage`` for every model of the dataset; returns the metrics written to the dataset file.

    Raises :class:`VerificationFailed` after writing the records if a verification failed.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown evaluation stage {stage!r}; stages: {', '.join(STAGES)}")
    started = time.perf_counter()
    settings = evaluation_settings(profile, dataset)
    runs = model_runs(profile, dataset)
    for run in runs:
        for upstream in _UPSTREAM[stage]:
            if not (output_dir(profile, upstream, run) / "summary.json").is_file():
                raise FileNotFoundError(f"{run.label}: run the {upstream} stage first (lipbench {upstream} --dataset {dataset})")
    summaries: dict[ModelRun, dict[str, Any]] = {}
    pending: list[tuple[ModelRun, str]] = []
    for run in runs:
        key = fingerprint(profile, stage, run, settings)
        record = output_dir(profile, stage, run) / "summary.json"
        if record.is_file() and read_json(record).get("fingerprint") == key:
            summaries[run] = read_json(record) | {"reused": True}
        else:
            pending.append((run, key))
    bar = tqdm(total=len(pending), desc=f"{stage} {dataset}", disable=tqdm_disable(progress and bool(pending)))
    if settings.workers > 1 and len(pending) > 1:
        threads = max(1, (torch.get_num_threads() or 1) // settings.workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(settings.workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(evaluate_one, str(profile.path), stage, run, fp): run for run, fp in pending}
            for future, run in futures.items():
                summaries[run] = future.result()
                bar.update()
    else:
        for run, key in pending:
            summaries[run] = evaluate_one(str(profile.path), stage, run, key)
            bar.update()
    bar.close()
    _remove_stale(profile, stage, dataset, runs)
    models: dict[str, dict[str, Any]] = {}
    for run in runs:
        models.setdefault(run.method, {})[f"seed{run.seed}"] = summaries[run]
    metrics = {
        "profile": profile.name,
        "stage": stage,
        "dataset": dataset,
        "models": models,
        "recomputed": [run.label for run, _ in pending],
        "seconds": time.perf_counter() - started,
    }
    write_json_atomic(stage_metrics_path(profile, stage, dataset), metrics)
    failures = [message for run in runs for message in summaries[run].get("failures", [])]
    if failures:
        raise VerificationFailed("\n".join(failures))
    return metrics


def _remove_stale(profile: Profile, stage: str, dataset: str, runs: list[ModelRun]) -> None:
    """Drop outputs of models no longer in the profile (the stage's folder is persistent)."""
    root = profile.path_of("evaluation") / stage / dataset
    keep = {output_dir(profile, stage, run) for run in runs}
    for folder in root.glob("*/seed*"):
        if folder not in keep:
            shutil.rmtree(folder)
    for folder in root.glob("*"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
