"""The training loop: deterministic, checkpointed every epoch, resumable, NaN-guarded.

Determinism: the seed fixes the initial weights; each epoch's batch order and each
epoch's adversarial-start noise come from generators seeded by ``(seed, epoch)``; and
deterministic algorithms are on. A run resumed from an epoch checkpoint therefore
replays exactly the uninterrupted run (on CPU; GPU kernels may differ run to run).

Under ``torchrun`` the same loop trains with DistributedDataParallel: see
:mod:`lipbench.train.distributed` for the data sharding, the loss and gradient
equivalence with one process, rank-0-only writes and the consistent NaN guard. The
recipe's ``precision`` (bf16 autocast) and ``compile`` (torch.compile) are applied here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from tqdm import tqdm

from lipbench.data import DatasetSplits
from lipbench.methods import get_method
from lipbench.nn.certificates import predictions
from lipbench.progress import tqdm_disable
from lipbench.train.checkpoint import data_fingerprint, load_checkpoint, run_fingerprint, save_checkpoint
from lipbench.train.config import TrainConfig
from lipbench.train.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    ShardedBatchSampler,
    distributed_session,
    make_step_loss,
)
from lipbench.train.memory import peak_rss_mb, reset_peak_rss
from lipbench.train.precision import parametrized_weights, precision_context

__all__ = [
    "TrainingDivergedError",
    "TrainResult",
    "train_model",
    "accuracy",
    "set_determinism",
]

_CHECK_EVERY = 50  # steps between host-side checks of the loss on GPUs


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]]
    train_accuracy: float
    test_accuracy: float
    final_loss: float | None  # None after zero epochs
    seconds_per_epoch: list[float]
    resumed_from_epoch: int | None
    peak_memory_mb: dict[str, float] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    backend: str | None = None


def set_determinism(seed: int, device: torch.device, compiled: bool = False) -> None:
    """Seed torch and turn deterministic algorithms on (warn-only on CUDA, where some
    kernels have no deterministic variant). ``compiled``: the run will torch.compile, so
    the compiler's own deterministic flag is set too (importing the compiler costs about
    1.3 s per process, so runs that do not compile skip it)."""
    torch.manual_seed(seed)
    warn_only = device.type == "cuda"
    if compiled:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
    else:
        # torch.use_deterministic_algorithms minus the compiler's flag: nothing is compiled.
        torch._C._set_deterministic_algorithms(True, warn_only=warn_only)


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 7 + stream) % 2**63)


def _attack_generator(seed: int, epoch: int, context: DistributedContext) -> torch.Generator:
    """The adversarial-start noise of one epoch: rank 0 (or a single process) draws the
    usual stream; other ranks draw their own, so that shards get independent noise (a
    rank draws noise for its shard only, so adversarial inputs are not bit-equal to a
    single process's under DDP)."""
    generator = _generator(seed, epoch, stream=1)
    if context.rank == 0:
        return generator
    return torch.Generator().manual_seed((generator.initial_seed() * 1_000_033 + context.rank) % 2**63)


def _collate_or_none(items: list[Any]) -> Any:
    return default_collate(items) if items else None


def _batches(
    dataset: Dataset,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    context: DistributedContext = SINGLE_PROCESS,
) -> Iterator[tuple[Tensor, Tensor, int]]:
    """Shuffled batches ``(x, y, global batch size)``; tensor-backed datasets are sliced
    without a DataLoader. Distributed: this rank's contiguous shard of each global batch."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        x, y = tensors
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            size = len(index)
            if context.enabled:
                first, stop = context.shard_bounds(size)
                index = index[first:stop]
            yield x[index].to(device, non_blocking=True), y[index].to(device, non_blocking=True), size
        return
    if not context.enabled:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, num_workers=0)
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), len(y)
        return
    sampler = ShardedBatchSampler(len(dataset), batch_size, generator, context)
    # generator=: the loader draws its base seed from it before the sampler's permutation,
    # as the shuffling loader of one process does, so both walk the same permutation.
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=0, collate_fn=_collate_or_none, generator=generator)
    for step, batch in enumerate(loader):
        if batch is None:  # an empty shard (a batch smaller than the number of ranks)
            sample_x, sample_y = default_collate([dataset[0]])
            batch = sample_x[:0], sample_y[:0]
        x, y = batch
        size = min(batch_size, len(dataset) - step * batch_size)
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), size


@torch.no_grad()
def accuracy(
    model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device, context: DistributedContext = SINGLE_PROCESS
) -> float:
    """Clean accuracy of ``model`` in eval mode (restores its mode). Distributed: each rank
    evaluates its contiguous slice of ``dataset`` and the counts are all-reduced."""
    was_training = model.training
    model.eval()
    correct = total = 0
    tensors = getattr(dataset, "tensors", None)
    if context.enabled:
        first, stop = context.shard_bounds(len(dataset))
        if tensors is not None:
            tensors = tuple(t[first:stop] for t in tensors)
        else:
            dataset = Subset(dataset, range(first, stop))
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
    if context.enabled:
        counts = context.reduce_sum(torch.tensor([correct, total], dtype=torch.long, device=context.device_hint()))
        correct, total = int(counts[0]), int(counts[1])
    return correct / max(total, 1)


def _optimizer(config: TrainConfig, model: nn.Module, learned_loss: nn.Module | None = None) -> torch.optim.Optimizer:
    """The recipe's optimiser; a learned loss's parameters are a second group without weight decay."""
    recipe = config.recipe
    params: Any = model.parameters()
    if learned_loss is not None:
        params = [{"params": list(params)}, {"params": list(learned_loss.parameters()), "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.learning_rate, momentum=0.9, weight_decay=recipe.weight_decay)
    return torch.optim.Adam(params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)


def _learning_rate(config: TrainConfig, epoch: int) -> float:
    recipe = config.recipe
    if recipe.schedule == "cosine":
        return recipe.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / recipe.epochs))
    return recipe.learning_rate


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
    peak = {"process_rss": peak_rss_mb()}
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
    leaving the last good checkpoint in place. Under ``torchrun`` (or inside an open
    process group) every rank calls this; rank 0 alone writes the checkpoint.
    """
    with distributed_session(device) as (context, device):
        return _train(config, splits, device, checkpoint_path, progress, context)


@dataclass
class _Run:
    """The state of one training run between epochs."""

    config: TrainConfig
    method: Any
    model: nn.Module
    trained: nn.Module  # DDP wrapper when distributed, else ``model``
    optimizer: torch.optim.Optimizer
    step_loss: Any
    parametrized: list[tuple[nn.Module, str]]
    fingerprint: str
    history: list[dict[str, Any]]
    start_epoch: int
    resumed: bool
    label: str


def _start(
    config: TrainConfig, splits: DatasetSplits, device: torch.device, checkpoint_path: Path | None, context: DistributedContext
) -> _Run:
    """Build the model and optimiser, then resume from this config's checkpoint if there is one."""
    recipe = config.recipe
    method = get_method(config.method)
    set_determinism(config.seed, device, compiled=recipe.compile)
    model = method.build_model(config.input_shape, config.num_classes, config.architecture, recipe.conv_correction).to(device)
    step_loss = make_step_loss(method, config.num_classes == 2, config.method_params, context)
    learned_loss = step_loss.learned_loss.to(device) if step_loss.learned_loss is not None else None
    optimizer = _optimizer(config, model, learned_loss)
    fingerprint = run_fingerprint(config, data_fingerprint(splits), device)
    checkpoint = load_checkpoint(checkpoint_path, fingerprint, device, talk=context.is_main)
    history: list[dict[str, Any]] = []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if learned_loss is not None:
            learned_loss.load_state_dict(checkpoint["loss"])
        history = list(checkpoint["history"])
    start_epoch = int(checkpoint["epoch"]) if checkpoint is not None else 0
    context.agree(start_epoch, "the epoch to resume from")
    parametrized = parametrized_weights(model)
    if recipe.compile:
        model.compile()  # in place: the state dict keeps its keys
    return _Run(
        config=config,
        method=method,
        model=model,
        trained=context.wrap(model, device),  # DDP when distributed; ``model`` stays the plain module
        optimizer=optimizer,
        step_loss=step_loss,
        parametrized=parametrized,
        fingerprint=fingerprint,
        history=history,
        start_epoch=start_epoch,
        resumed=checkpoint is not None,
        label=f"{config.dataset}/{config.model}/seed{config.seed}",
    )


def _epoch(
    run: _Run,
    epoch: int,
    splits: DatasetSplits,
    device: torch.device,
    checkpoint_path: Path | None,
    progress: bool,
    context: DistributedContext,
) -> dict[str, Any]:
    """Train one epoch; return its history row (loss, running accuracy, test accuracy, seconds)."""
    started = time.perf_counter()
    config, recipe, model = run.config, run.config.recipe, run.model
    for group in run.optimizer.param_groups:
        group["lr"] = _learning_rate(config, epoch)
    run.trained.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
    seen = 0
    attack_generator = _attack_generator(config.seed, epoch, context)
    steps = tqdm(
        _batches(splits.train, recipe.batch_size, _generator(config.seed, epoch, stream=0), device, context),
        total=math.ceil(len(splits.train) / recipe.batch_size),
        desc=f"{run.label} epoch {epoch + 1}/{recipe.epochs}",
        disable=tqdm_disable(progress and context.is_main),
        leave=False,
    )
    for step, (x, y, global_size) in enumerate(steps):
        with precision_context(recipe.precision, device, run.parametrized):
            # The method's hooks (attacks) get the plain module: its parameters are every rank's.
            inputs = run.method.training_inputs(
                model, x, y, run.step_loss.function, config.method_params, splits.info.bounds, attack_generator
            )
            run.optimizer.zero_grad(set_to_none=True)
            outputs = run.trained(inputs)
            if recipe.precision != "fp32":
                outputs = outputs.float()
            loss, value = run.step_loss(outputs, y, global_size)
        # Track the first non-finite step on the device; look at it every step on CPU and every
        # _CHECK_EVERY steps on GPUs (a host sync per step would stall them). ``value`` is the
        # all-reduced loss of the global batch: non-finite on every rank as soon as it is on
        # one, so all ranks stop at the same step.
        first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(value), step, first_bad_step)
        if device.type == "cpu" or step % _CHECK_EVERY == _CHECK_EVERY - 1:
            _raise_if_diverged(first_bad_step, value, run.label, epoch, checkpoint_path)
        loss.backward()
        context.average_gradients(run.step_loss.learned_loss)  # DDP averages the model's only
        run.optimizer.step()
        loss_sum += value * global_size
        correct += (predictions(outputs.detach()) == y).sum()
        seen += global_size
    _raise_if_diverged(first_bad_step, loss_sum, run.label, epoch, checkpoint_path)
    correct = context.reduce_sum(correct)
    return {
        "epoch": epoch + 1,
        "train_loss": float(loss_sum) / max(seen, 1),
        "train_accuracy_running": int(correct) / max(seen, 1),
        "test_accuracy": accuracy(model, splits.test, recipe.eval_batch_size, device, context),
        "seconds": time.perf_counter() - started,
    }


def _train(
    config: TrainConfig,
    splits: DatasetSplits,
    device: torch.device,
    checkpoint_path: Path | None,
    progress: bool,
    context: DistributedContext,
) -> TrainResult:
    reset_peak_rss()  # this training's peak, not an earlier one's in the same process
    run = _start(config, splits, device, checkpoint_path, context)
    recipe = config.recipe
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    writes = checkpoint_path if context.is_main else None
    for epoch in range(run.start_epoch, recipe.epochs):
        run.history.append(_epoch(run, epoch, splits, device, checkpoint_path, progress, context))
        row = run.history[-1]
        if progress and context.is_main:
            tqdm.write(f"{run.label} epoch {epoch + 1}: loss {row['train_loss']:.4f}, test accuracy {row['test_accuracy']:.4f}")
        if writes is not None:
            save_checkpoint(writes, run.fingerprint, run.model, run.optimizer, epoch + 1, run.history, run.step_loss.learned_loss)
    model, history = run.model, run.history
    model.eval()
    # The last epoch's test accuracy is of these very weights (a resumed, finished run included).
    test_accuracy = (
        history[-1]["test_accuracy"] if history else accuracy(model, splits.test, recipe.eval_batch_size, device, context)
    )
    return TrainResult(
        model=model,
        history=history,
        train_accuracy=accuracy(model, splits.train, recipe.eval_batch_size, device, context),
        test_accuracy=test_accuracy,
        final_loss=history[-1]["train_loss"] if history else None,
        seconds_per_epoch=[row["seconds"] for row in history],
        resumed_from_epoch=run.start_epoch if run.resumed else None,
        peak_memory_mb=_peak_memory_mb(device),
        rank=context.rank,
        world_size=context.world_size,
        backend=context.backend,
    )
