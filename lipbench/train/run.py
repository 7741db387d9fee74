"""One training stage run: resolve and validate, load data, train, write the outputs.

Outputs (paths from :class:`lipbench.runs.Layout` unless given): ``weights.safetensors`` in
the model folder (DVC-cached, git-ignored), ``checkpoint.pt`` (resume state) beside it when
``out_dir`` is given, else in the layout's checkpoint folder (outside DVC's outputs),
``metrics.json`` (the :class:`~lipbench.summaries.TrainSummary`) in the train metrics folder
and ``history.json`` (per-epoch rows for ``dvc plots``) beside it when ``metrics_dir`` is
given, else in the layout's history folder (both small, git-tracked). Nothing is written
for a model that cannot be exported (non-finite weights): the run fails with
:class:`~lipbench.train.loop.TrainingDivergedError` and its last epoch checkpoint is kept.

Under ``torchrun`` every rank trains and rank 0 alone writes these files (see
:mod:`lipbench.train.distributed`).
"""

from __future__ import annotations

import time
from pathlib import Path

from torch import nn

from lipbench.data import get_dataset, load_dataset
from lipbench.devices import resolve_device
from lipbench.environment import environment_record
from lipbench.io import write_json_atomic
from lipbench.methods import get_method
from lipbench.nn import export
from lipbench.profiles import Profile, ProfileError
from lipbench.runs import Layout, RunKey
from lipbench.summaries import Reference, TrainSummary, TrainTiming, write_summary
from lipbench.train.artifacts import ModelMetadata, save_weights
from lipbench.train.config import TrainConfig, resolve_train_config
from lipbench.train.loop import TrainingDivergedError, TrainResult, train_model

__all__ = ["config_from_profile", "run_training"]


def _model_params(profile: Profile, key: RunKey) -> dict:
    """``train.<dataset>.<model>``. When it is missing, a model named after no registered
    method is an unknown method (RegistryError listing the known ones); a registered one
    needs its (possibly empty) section, which DVC requires too."""
    section = profile.section("train", key.dataset)
    if key.model not in section:
        get_method(key.model)
        raise ProfileError(
            f"{profile.path}: train.{key.dataset}.{key.model} is missing; add `{key.model}: {{}}` under "
            f"train.{key.dataset} (the method's defaults) or the model's parameters"
        )
    return profile.model_params(key.dataset, key.model)


def config_from_profile(profile: Profile, key: RunKey) -> TrainConfig:
    """Validate the run against the profile (names, method parameters, recipe)."""
    profile.check_member("dataset", key.dataset)
    profile.check_member("model", key.model)
    profile.check_member("seed", key.seed)
    info = get_dataset(key.dataset).info
    return resolve_train_config(
        key.dataset,
        key.model,
        _model_params(profile, key),
        profile.recipe(key.dataset),
        key.seed,
        info.input_shape,
        info.num_classes,
    )


def _exported(result: TrainResult, key: RunKey, checkpoint: Path) -> nn.Module:
    """The plain model to write, or TrainingDivergedError: a model that cannot be exported is never recorded."""
    try:
        return export(result.model)
    except ValueError as error:
        raise TrainingDivergedError(
            f"{key.label}: the trained weights cannot be exported ({error}); nothing was recorded, the last epoch "
            f"checkpoint is kept at {checkpoint}. Lower train.{key.dataset}.recipe.learning_rate."
        ) from None


def _summary(key: RunKey, config: TrainConfig, result: TrainResult, splits, device, started: float) -> TrainSummary:
    method = get_method(config.method)
    return TrainSummary(
        dataset=key.dataset,
        model=key.model,
        seed=key.seed,
        method=config.method,
        paper_name=method.paper_name,
        kit=method.kit,
        constrained=method.constrained,
        architecture=config.architecture,
        reference=Reference(**method.reference),
        method_params=config.method_params,
        recipe=config.as_dict()["recipe"],
        epochs=config.recipe.epochs,
        train_accuracy=result.train_accuracy,
        test_accuracy=result.test_accuracy,
        final_loss=result.final_loss,
        parameter_count=sum(p.numel() for p in result.model.parameters()),
        train_examples=len(splits.train),
        test_examples=len(splits.test),
        timing=TrainTiming(
            seconds_per_epoch=result.seconds_per_epoch,
            train_seconds=sum(result.seconds_per_epoch),
            wall_seconds=time.perf_counter() - started,
            resumed_from_epoch=result.resumed_from_epoch,
        ),
        peak_memory_mb=result.peak_memory_mb,
        environment=environment_record(device, key.seed)
        | {"distributed": {"world_size": result.world_size, "backend": result.backend}},
    )


def run_training(
    profile: Profile,
    key: RunKey,
    out_dir: Path | None = None,
    metrics_dir: Path | None = None,
    device_name: str | None = None,
    progress: bool = True,
) -> TrainSummary:
    """Train ``key`` and write its outputs (default folders: the profile's layout); returns
    the summary written to ``metrics.json``. Distributed (torchrun): every rank returns it,
    rank 0 alone writes."""
    started = time.perf_counter()
    layout = Layout.of(profile)
    checkpoint = layout.checkpoint(key) if out_dir is None else Path(out_dir) / "checkpoint.pt"
    out_dir = layout.model_dir(key) if out_dir is None else Path(out_dir)
    history_path = layout.train_history(key) if metrics_dir is None else Path(metrics_dir) / "history.json"
    metrics_dir = layout.train_metrics_dir(key) if metrics_dir is None else Path(metrics_dir)
    config = config_from_profile(profile, key)
    device = resolve_device(device_name or profile.device())
    splits = load_dataset(key.dataset, profile.path_of("data"), profile.prepare_params(key.dataset))
    result = train_model(config, splits, device, checkpoint, progress)
    plain = _exported(result, key, checkpoint)
    summary = _summary(key, config, result, splits, device, started)
    if result.rank == 0:
        metadata = ModelMetadata.of(config)
        save_weights(out_dir / "weights.safetensors", plain, metadata, constrained=result.model)
        history = [{name: value for name, value in row.items() if name != "seconds"} for row in result.history]
        write_json_atomic(history_path, history)
        write_summary(metrics_dir / "metrics.json", summary)
    return summary
