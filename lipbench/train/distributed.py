"""Data-parallel training under ``torchrun`` (DistributedDataParallel), CPU or GPUs.

``lipbench train`` runs unchanged under::

    torchrun --standalone --nproc_per_node N -m lipbench.cli.main train --params ... --dataset ... \\
        --method ... --seed ... --out ... --metrics ...

:func:`distributed_session` reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``,
opens the process group (``nccl`` when training on CUDA, each rank on
``cuda:LOCAL_RANK``; ``gloo`` on CPU) and closes it when training ends. With one process
(no torchrun, or ``--nproc_per_node 1``) nothing changes: no process group, no wrapper,
bit-identical to a plain run.

Data. ``recipe.batch_size`` is the *global* batch. Every rank walks the same per-epoch
permutation (seeded by ``(seed, epoch)``, as a single process does) and takes its
contiguous shard of each global batch (:meth:`DistributedContext.shard_bounds`; sizes
differ by at most one, the last batch included, nothing is padded or dropped). So the
union of the shards of step ``t`` is exactly the single-process batch of step ``t``.
Datasets that are not tensor-backed go through a ``DataLoader`` with
:class:`ShardedBatchSampler`, which does the same from the same permutation (a
``DistributedSampler`` pads with duplicates and strides the permutation, which would
change the global batches).

Loss and gradients. The losses of :mod:`lipbench.losses` take a ``reduce`` callable
(:meth:`DistributedContext.reduce_sum`: all-reduce-sum of a detached count tensor). Each
rank ``r`` of ``W`` computes ``ℓ_r``: local sums over its shard divided by the *global*
class counts and batch size, so that ``Σ_r ℓ_r = L``, the single-process loss of the
concatenated batch, and ``Σ_r ∇ℓ_r = ∇L`` (every rank holds the same parameters). DDP
*averages* gradients over ranks, so each rank backpropagates ``W · ℓ_r``:
``(1/W) Σ_r ∇(W ℓ_r) = Σ_r ∇ℓ_r = ∇L``. The loss value reported (history, NaN guard) is
the all-reduce-sum ``Σ_r ℓ_r = L`` (in float64). What is all-reduced per step: the class
counts / batch size inside the loss (one small tensor per loss call, so also per attack
step of adversarial training), the loss value, and DDP's gradient buckets (DDP also
broadcasts rank 0's buffers, the power-iteration vectors, which every rank computes
identically anyway); per epoch, the correct-prediction count; at evaluation, the correct
and total counts of each rank's slice of the evaluated set. Only the float summation
order differs from one process (the all-reduce adds per-rank partial sums), so fp32
weights agree to rounding, not bit for bit (bf16 runs agree to bf16 rounding only).
Adversarial training is the exception: each rank draws the random starts of its own
shard (rank 0 from the single-process stream), so its inputs are other draws than a
single process's.

Methods whose ``loss_function`` does not take ``reduce`` (the older plug-in signature
``loss_function(self, binary, params)``) still train: their loss is normalised over
each rank's own shard, and each rank backpropagates ``W n_r / n · ℓ_r`` (``n_r`` its
shard size, ``n`` the global batch size), so DDP's average is
``Σ_r (n_r / n) ∇ℓ_r``: exact for losses that are a mean of per-example terms,
the usual data-parallel approximation for class-conditional means (hKR, KR).

Rank 0 alone writes (checkpoints, weights, metrics, history) and draws progress bars.
All ranks read the checkpoint to resume, and must agree on the epoch they resume from.
A non-finite loss stops every rank at the same step: the guard looks at the
all-reduced loss value, which is non-finite on every rank as soon as one rank's is.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

__all__ = [
    "DistributedContext",
    "SINGLE_PROCESS",
    "StepLoss",
    "ShardedBatchSampler",
    "distributed_session",
    "is_main_process",
    "make_step_loss",
    "torchrun_environment",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the process group (``world_size == 1``: alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum of a detached tensor over all ranks (a new tensor on every rank); the
        tensor itself with one process. The ``reduce`` of :mod:`lipbench.losses`."""
        if not self.enabled:
            return tensor
        import torch.distributed as dist

        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def shard_bounds(self, size: int) -> tuple[int, int]:
        """``[start, stop)`` of this rank's contiguous shard of ``size`` items: ranks
        ``0..size % W - 1`` take one more item than the others."""
        base, extra = divmod(size, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def agree(self, value: int, what: str) -> None:
        """Raise unless every rank holds the same integer ``value``."""
        if not self.enabled:
            return
        import torch.distributed as dist

        extremes = torch.tensor([value, -value], dtype=torch.long, device=self.device_hint())
        dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
        if int(extremes[0]) != -int(extremes[1]):
            raise RuntimeError(
                f"the {self.world_size} ranks disagree on {what} ({-int(extremes[1])} to {int(extremes[0])}); "
                "every rank must see the same files (a shared filesystem)"
            )

    def average_gradients(self, module: nn.Module | None) -> None:
        """Average ``module``'s parameter gradients over the ranks (a learned loss's
        variables, which DDP does not see; a missing gradient counts as 0). Nothing with
        one process or ``module`` None."""
        if not self.enabled or module is None:
            return
        import torch.distributed as dist

        for parameter in module.parameters():
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad /= self.world_size

    def device_hint(self) -> torch.device:
        """A device the backend can communicate tensors on."""
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` under DistributedDataParallel (itself with one process)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)


SINGLE_PROCESS = DistributedContext()


def torchrun_environment() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when launched by torchrun with more than one
    process, else None."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return None
    if "RANK" not in os.environ:
        raise ValueError(f"WORLD_SIZE={world_size} but RANK is not set; launch distributed runs with torchrun")
    rank = int(os.environ["RANK"])
    return rank, world_size, int(os.environ.get("LOCAL_RANK", rank))


def is_main_process() -> bool:
    """True unless this is a torchrun rank other than 0 (no process group needed)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


@contextmanager
def distributed_session(device: torch.device) -> Iterator[tuple[DistributedContext, torch.device]]:
    """The distributed context and this rank's device for one training run.

    An already-initialised process group is used as is (and left open); under torchrun
    the group is opened here (``nccl`` for CUDA, each rank on ``cuda:LOCAL_RANK``;
    ``gloo`` for CPU) and destroyed on exit; otherwise: one process, ``device`` unchanged.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        backend = str(dist.get_backend())
        if backend == "nccl" and device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        rank = dist.get_rank()
        yield DistributedContext(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)), backend), device
        return
    environment = torchrun_environment()
    if environment is None:
        yield SINGLE_PROCESS, device
        return
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run with one process")
    rank, world_size, local_rank = environment
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"rank {rank} has LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                "use --nproc_per_node <= the number of GPUs"
            )
        # One GPU per rank: cuda:LOCAL_RANK (pick GPUs with CUDA_VISIBLE_DEVICES).
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=rank, world_size=world_size, device_id=device)
        backend = "nccl"
    elif device.type == "cpu":
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        backend = "gloo"
    else:
        raise ValueError(f"distributed training runs on cpu (gloo) or cuda (nccl) devices, not {device}")
    try:
        yield DistributedContext(rank, world_size, local_rank, backend), device
    finally:
        dist.destroy_process_group()


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's index lists: its contiguous shard of each global batch of one epoch's
    permutation ``torch.randperm(n, generator=generator)``, drawn at the first batch. In a
    ``DataLoader(..., generator=generator)`` this is the permutation that a shuffling
    ``DataLoader`` with the same generator walks (both loaders draw their base seed from
    the generator first). Shards may be empty when a batch has fewer items than ranks."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator, context: DistributedContext) -> None:
        self.size, self.batch_size, self.generator, self.context = size, batch_size, generator, context

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.size, generator=self.generator)
        for start in range(0, self.size, self.batch_size):
            batch = order[start : start + self.batch_size]
            first, stop = self.context.shard_bounds(len(batch))
            yield batch[first:stop].tolist()


def _accepts_reduce(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return "reduce" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


@dataclass(frozen=True)
class StepLoss:
    """A method's loss for one training step, with what to backpropagate and what to report.

    ``function`` is the loss handed to the method's hooks (adversarial attacks included):
    with ``global_normalisers`` it uses the context's ``reduce``, so its per-example
    gradients are those of the single-process loss of the whole batch.
    """

    function: Callable[[Tensor, Tensor], Tensor]
    context: DistributedContext
    global_normalisers: bool

    @property
    def learned_loss(self) -> nn.Module | None:
        """``function`` when it is a module with parameters: a loss with learned variables
        (see :meth:`lipbench.methods.Method.loss_function`); else None."""
        function = self.function
        return function if isinstance(function, nn.Module) and any(True for _ in function.parameters()) else None

    def __call__(self, outputs: Tensor, labels: Tensor, global_size: int) -> tuple[Tensor, Tensor]:
        """``(objective, value)``: backpropagate ``objective``; ``value`` (float64,
        detached, the same on every rank) is the loss of the whole global batch."""
        loss = self.function(outputs, labels)
        if not self.context.enabled:
            return loss, loss.detach().double()
        world_size = self.context.world_size
        if self.global_normalisers:
            # Σ_r ℓ_r = L and DDP averages over W ranks: backpropagate W·ℓ_r.
            return loss * world_size, self.context.reduce_sum(loss.detach().double())
        # A loss normalised over this shard: weight it by the shard's share of the batch.
        share = len(labels) / global_size
        if len(labels) == 0:  # the mean of nothing is NaN; contribute an exact, connected zero
            loss = outputs.sum() * 0.0
        return loss * (world_size * share), self.context.reduce_sum(loss.detach().double() * share)


def make_step_loss(method: Any, binary: bool, params: Mapping[str, Any], context: DistributedContext) -> StepLoss:
    """The method's loss, built with ``reduce=context.reduce_sum`` when distributed and the
    method's ``loss_function`` takes ``reduce``; called exactly as before otherwise."""
    if not context.enabled:
        return StepLoss(method.loss_function(binary=binary, params=params), context, True)
    if _accepts_reduce(method.loss_function):
        return StepLoss(method.loss_function(binary=binary, params=params, reduce=context.reduce_sum), context, True)
    if context.is_main:
        from tqdm import tqdm

        tqdm.write(
            f"lipbench train: method {getattr(method, 'name', method)!r}'s loss_function takes no reduce= argument: "
            f"each of the {context.world_size} ranks normalises its loss over its own shard (exact for per-example "
            "means, approximate for class-conditional means such as hKR's)"
        )
    return StepLoss(method.loss_function(binary=binary, params=params), context, False)
