"""One training stage run: resolve and validate, load data, train, write the outputs.

Outputs: in ``out_dir`` (DVC-cached, git-ignored) ``weights.safetensors`` and
``checkpoint.pt`` (resume state); in ``metrics_dir`` (small, git-tracked) ``metrics.json``
(results + run record) and ``history.json`` (per-epoch rows for ``dvc plots``).

Under ``torchrun`` every rank trains and rank 0 alone writes these files (see
:mod:`lipbench.train.distributed`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lipbench.data import get_dataset, load_dataset
from lipbench.devices import resolve_device
from lipbench.environment import environment_record
from lipbench.io import write_json_atomic
from lipbench.methods import get_method
from lipbench.profiles import Profile
from lipbench.train.artifacts import ModelMetadata, save_weights
from lipbench.train.config import TrainConfig, resolve_train_config
from lipbench.train.loop import train_model

__all__ = ["config_from_profile", "run_training", "OUTPUT_FILES"]

OUTPUT_FILES = {
    "weights": "weights.safetensors",
    "metrics": "metrics.json",
    "history": "history.json",
    "checkpoint": "checkpoint.pt",
}


def config_from_profile(profile: Profile, dataset: str, model: str, seed: int) -> TrainConfig:
    """Validate the run against the profile (names, method parameters, recipe)."""
    profile.check_member("dataset", dataset)
    profile.check_member("method", model)
    profile.check_member("seed", seed)
    info = get_dataset(dataset).info
    return resolve_train_config(
        dataset, model, profile.model_params(dataset, model), profile.recipe(dataset), seed, info.input_shape, info.num_classes
    )


def run_training(
    profile: Profile,
    dataset: str,
    model: str,
    seed: int,
    out_dir: Path,
    metrics_dir: Path,
    device_name: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and write the outputs; returns the metrics written to ``metrics.json``.

    Distributed (torchrun): every rank returns the metrics, rank 0 alone writes."""
    started = time.perf_counter()
    config = config_from_profile(profile, dataset, model, seed)
    device = resolve_device(device_name or profile.device())
    splits = load_dataset(dataset, profile.path_of("data"), profile.prepare_params(dataset))
    result = train_model(config, splits, device, out_dir / OUTPUT_FILES["checkpoint"], progress)
    method = get_method(config.method)
    metadata = ModelMetadata(
        dataset=dataset,
        model=model,
        method=config.method,
        architecture=config.architecture,
        input_shape=config.input_shape,
        num_classes=config.num_classes,
        method_params=config.method_params,
        conv_correction=config.recipe.conv_correction,
    )
    history = [{key: value for key, value in row.items() if key != "seconds"} for row in result.history]
    metrics = {
        "dataset": dataset,
        "model": model,
        "method": config.method,
        "paper_name": method.paper_name,
        "constrained": method.constrained,
        "architecture": config.architecture,
        "method_params": config.method_params,
        "recipe": config.as_dict()["recipe"],
        "seed": seed,
        "epochs": config.recipe.epochs,
        "train_accuracy": result.train_accuracy,
        "test_accuracy": result.test_accuracy,
        "final_loss": result.final_loss,
        "parameter_count": sum(p.numel() for p in result.model.parameters()),
        "train_examples": len(splits.train),
        "test_examples": len(splits.test),
        "timing": {
            "seconds_per_epoch": result.seconds_per_epoch,
            "train_seconds": sum(result.seconds_per_epoch),
            "wall_seconds": time.perf_counter() - started,
            "resumed_from_epoch": result.resumed_from_epoch,
        },
        "peak_memory_mb": result.peak_memory_mb,
        "environment": environment_record(device, seed)
        | {"distributed": {"world_size": result.world_size, "backend": result.backend}},
    }
    if result.rank == 0:
        save_weights(out_dir / OUTPUT_FILES["weights"], result.model, metadata)
        write_json_atomic(metrics_dir / OUTPUT_FILES["history"], history)
        write_json_atomic(metrics_dir / OUTPUT_FILES["metrics"], metrics)
    return metrics
