"""Device choice: CUDA when available, CPU otherwise, one GPU per concurrent process.

With several visible GPUs, ``auto`` gives each lipbench process its own: it takes the
first GPU whose lock file (``$LIPBENCH_LOCK_DIR`` or the temp folder,
``lipbench-gpu-<i>.lock``) no other process holds, and keeps the lock until it exits.
So ``dvc queue start --jobs N`` on an N-GPU machine spreads the experiments over the
GPUs without any per-worker setting. When every GPU is taken it falls back to the one
with the most free memory. ``CUDA_VISIBLE_DEVICES`` still restricts the candidates, and
under ``torchrun`` each rank uses ``cuda:LOCAL_RANK`` instead.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO

import torch

__all__ = ["resolve_device", "pick_cuda_device"]

_HELD_LOCKS: dict[int, IO[str]] = {}  # GPU index -> lock file kept open for the life of the process


def pick_cuda_device() -> torch.device:
    """This process's GPU: the one it already holds, else a free one (lock file), else the
    one with the most free memory."""
    count = torch.cuda.device_count()
    if count <= 1:
        return torch.device("cuda:0")
    if _HELD_LOCKS:
        return torch.device(f"cuda:{next(iter(_HELD_LOCKS))}")
    folder = Path(os.environ.get("LIPBENCH_LOCK_DIR", tempfile.gettempdir()))
    for index in range(count):
        handle = open(folder / f"lipbench-gpu-{index}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _HELD_LOCKS[index] = handle
        return torch.device(f"cuda:{index}")
    free = [torch.cuda.mem_get_info(index)[0] for index in range(count)]
    return torch.device(f"cuda:{max(range(count), key=free.__getitem__)}")


def resolve_device(name: str) -> torch.device:
    """``auto``: a GPU when available (see the module docstring), CPU otherwise; ``cpu``;
    ``cuda`` / ``cuda:N`` (an error without a GPU)."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        local_rank = os.environ.get("LOCAL_RANK")
        return torch.device(f"cuda:{local_rank}") if local_rank is not None else pick_cuda_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but no CUDA device is available; use 'auto' or 'cpu'")
    return device
