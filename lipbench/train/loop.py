"""The training loop: deterministic, checkpointed every epoch, resumable, NaN-guarded.

Determinism: the seed fixes the initial weights; each epoch's batch order and each
epoch's adversarial-start noise come from generators seeded by ``(seed, epoch)``; and
deterministic algorithms are on. A run resumed from an epoch checkpoint therefore
replays exactly the uninterrupted run (on CPU; GPU kernels may differ run to run).
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lipbench.data import DatasetSplits
from lipbench.environment import source_fingerprint
from lipbench.evaluate.certify import predictions
from lipbench.io import atomic_path
from lipbench.methods import get_method
from lipbench.train.config import TrainConfig

__all__ = ["TrainingDivergedError", "TrainResult", "train_model", "accuracy", "set_determinism"]

CHECKPOINT_FORMAT = 1
_CHECK_EVERY = 50  # steps between host-side checks of the loss on GPUs


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]]
    train_accuracy: float
    test_accuracy: float
    final_loss: float
    seconds_per_epoch: list[float]
    resumed_from_epoch: int | None
    peak_memory_mb: dict[str, float] = field(default_factory=dict)


def set_determinism(seed: int, device: torch.device) -> None:
    """Seed torch and turn deterministic algorithms on (warn-only on CUDA, where some
    kernels have no deterministic variant)."""
    torch.manual_seed(seed)
    warn_only = device.type == "cuda"
    if "torch._inductor" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
    else:
        # What torch.use_deterministic_algorithms does, minus importing torch._inductor
        # (1.3 s per process) to set its compile flag: nothing has been compiled.
        torch._C._set_deterministic_algorithms(True, warn_only=warn_only)


def data_fingerprint(splits: DatasetSplits) -> str:
    """Hash of the prepared data's manifest (which records the prepared files' checksums)."""
    return hashlib.sha256(json.dumps(dict(splits.manifest), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 7 + stream) % 2**63)


def _batches(
    dataset: Dataset, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled batches; tensor-backed datasets are sliced without a DataLoader."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        x, y = tensors
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            yield x[index].to(device, non_blocking=True), y[index].to(device, non_blocking=True)
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, num_workers=0)
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device) -> float:
    """Clean accuracy of ``model`` in eval mode (restores its mode)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    tensors = getattr(dataset, "tensors", None)
    chunks = (
        zip(tensors[0].split(batch_size), tensors[1].split(batch_size))
        if tensors is not None
        else DataLoader(dataset, batch_size=batch_size, shuffle=False)
    )
    for x, y in chunks:
        x, y = x.to(device), y.to(device)
        correct += int((predictions(model(x)) == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    recipe = config.recipe
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=recipe.learning_rate, momentum=0.9, weight_decay=recipe.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)


def _learning_rate(config: TrainConfig, epoch: int) -> float:
    recipe = config.recipe
    if recipe.schedule == "cosine":
        return recipe.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / recipe.epochs))
    return recipe.learning_rate


def run_fingerprint(config: TrainConfig, data_fingerprint: str) -> str:
    """What must match for a checkpoint to be resumed: the config, the prepared data,
    lipbench's source and torch's version. Anything else starts from scratch."""
    parts = (config.fingerprint(), data_fingerprint, source_fingerprint(), torch.__version__)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _save_checkpoint(
    path: Path, fingerprint: str, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list
) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "epoch": epoch,
        "history": history,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def _load_checkpoint(path: Path | None, fingerprint: str, device: torch.device) -> dict[str, Any] | None:
    """Our own checkpoint if it exists and belongs to this exact config (weights_only load)."""
    if path is None or not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # a truncated or foreign file: start over rather than guess
        tqdm.write(f"lipbench train: ignoring unreadable checkpoint {path} ({error}); starting from scratch")
        return None
    if payload.get("format") != CHECKPOINT_FORMAT or payload.get("fingerprint") != fingerprint:
        tqdm.write(f"lipbench train: checkpoint {path} is from another configuration, code or data; starting from scratch")
        return None
    return payload


def _raise_if_diverged(first_bad_step: Tensor, value: Tensor, label: str, epoch: int, checkpoint_path: Path | None) -> None:
    step = int(first_bad_step)
    if step < 0:
        return
    kept = (
        f"the last good checkpoint (epoch {epoch}) is kept at {checkpoint_path}"
        if epoch and checkpoint_path is not None
        else "no checkpoint had been written yet"
    )
    raise TrainingDivergedError(
        f"{label}: the loss became non-finite ({float(value)}) at epoch {epoch + 1}, step {step + 1}; {kept}. "
        "Lower train.<dataset>.recipe.learning_rate or check the method parameters."
    )


def _peak_memory_mb(device: torch.device) -> dict[str, float]:
    peak = {"process_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peak["cuda_allocated"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def train_model(
    config: TrainConfig,
    splits: DatasetSplits,
    device: torch.device,
    checkpoint_path: Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train one run; resume from ``checkpoint_path`` when it holds this config's state.

    Raises :class:`TrainingDivergedError` (naming epoch and step) on a non-finite loss,
    leaving the last good checkpoint in place.
    """
    method = get_method(config.method)
    set_determinism(config.seed, device)
    model = method.build_model(config.input_shape, config.num_classes, config.architecture, config.recipe.conv_correction)
    model = model.to(device)
    optimizer = _optimizer(config, model)
    loss_function = method.loss_function(binary=config.num_classes == 2, params=config.method_params)
    bounds = splits.info.bounds
    history: list[dict[str, Any]] = []
    start_epoch = 0
    fingerprint = run_fingerprint(config, data_fingerprint(splits))
    checkpoint = _load_checkpoint(checkpoint_path, fingerprint, device)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        history = list(checkpoint["history"])
        start_epoch = int(checkpoint["epoch"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    label = f"{config.dataset}/{config.model}/seed{config.seed}"
    for epoch in range(start_epoch, config.recipe.epochs):
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, epoch)
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        seen = 0
        attack_generator = _generator(config.seed, epoch, stream=1)
        steps = tqdm(
            _batches(splits.train, config.recipe.batch_size, _generator(config.seed, epoch, stream=0), device),
            total=math.ceil(len(splits.train) / config.recipe.batch_size),
            desc=f"{label} epoch {epoch + 1}/{config.recipe.epochs}",
            disable=not progress,
            leave=False,
        )
        for step, (x, y) in enumerate(steps):
            inputs = method.training_inputs(model, x, y, loss_function, config.method_params, bounds, attack_generator)
            optimizer.zero_grad(set_to_none=True)
            outputs = model(inputs)
            loss = loss_function(outputs, y)
            # Track the first non-finite step on the device; look at it every step on CPU
            # and every _CHECK_EVERY steps on GPUs (a host sync per step would stall them).
            first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(loss.detach()), step, first_bad_step)
            if device.type == "cpu" or step % _CHECK_EVERY == _CHECK_EVERY - 1:
                _raise_if_diverged(first_bad_step, loss, label, epoch, checkpoint_path)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * len(y)
            correct += (predictions(outputs.detach()) == y).sum()
            seen += len(y)
        _raise_if_diverged(first_bad_step, loss_sum, label, epoch, checkpoint_path)
        test_accuracy = accuracy(model, splits.test, config.recipe.eval_batch_size, device)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(loss_sum) / max(seen, 1),
                "train_accuracy_running": int(correct) / max(seen, 1),
                "test_accuracy": test_accuracy,
                "seconds": time.perf_counter() - started,
            }
        )
        if progress:
            tqdm.write(f"{label} epoch {epoch + 1}: loss {history[-1]['train_loss']:.4f}, test accuracy {test_accuracy:.4f}")
        if checkpoint_path is not None:
            _save_checkpoint(checkpoint_path, fingerprint, model, optimizer, epoch + 1, history)
    model.eval()
    return TrainResult(
        model=model,
        history=history,
        train_accuracy=accuracy(model, splits.train, config.recipe.eval_batch_size, device),
        test_accuracy=accuracy(model, splits.test, config.recipe.eval_batch_size, device),
        final_loss=history[-1]["train_loss"] if history else float("nan"),
        seconds_per_epoch=[row["seconds"] for row in history],
        resumed_from_epoch=start_epoch if checkpoint is not None else None,
        peak_memory_mb=_peak_memory_mb(device),
    )
