"""Epoch checkpoints of a training run: what identifies a run (config, prepared data,
lipbench's source, torch's version) and the checkpoint file that lets it resume.

A checkpoint is resumed only when its fingerprint matches the run exactly; it is loaded
with ``torch.load(weights_only=True)`` (no arbitrary unpickling) and written atomically.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from lipbench.data import DatasetSplits
from lipbench.environment import source_fingerprint
from lipbench.io import atomic_path
from lipbench.train.config import TrainConfig

__all__ = ["CHECKPOINT_FORMAT", "data_fingerprint", "run_fingerprint", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_FORMAT = 1


def data_fingerprint(splits: DatasetSplits) -> str:
    """Hash of the prepared data's manifest (which records the prepared files' checksums)."""
    return hashlib.sha256(json.dumps(dict(splits.manifest), sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_fingerprint(config: TrainConfig, data_fingerprint: str, device: torch.device | str = "cpu") -> str:
    """What must match for a checkpoint to be resumed: the config, the prepared data,
    lipbench's source, torch's version and the device kind, on CPU with torch's thread count
    (the float rounding depends on it: a run resumed under other threads would end in other
    bytes than an uninterrupted one). Anything else starts from scratch."""
    kind = torch.device(device).type
    where = f"cpu x{torch.get_num_threads()}" if kind == "cpu" else kind
    parts = (config.fingerprint(), data_fingerprint, source_fingerprint(), torch.__version__, where)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def save_checkpoint(
    path: Path,
    fingerprint: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list,
    learned_loss: nn.Module | None = None,
) -> None:
    """Write the resume state; ``learned_loss`` (a loss with learned variables) under "loss"."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "epoch": epoch,
        "history": history,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    if learned_loss is not None:
        payload["loss"] = learned_loss.state_dict()
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def load_checkpoint(path: Path | None, fingerprint: str, device: torch.device, talk: bool = True) -> dict[str, Any] | None:
    """Our own checkpoint if it exists and belongs to this exact config (weights_only load)."""
    if path is None or not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # a truncated or foreign file: start over rather than guess
        if talk:
            tqdm.write(f"lipbench train: ignoring unreadable checkpoint {path} ({error}); starting from scratch")
        return None
    if payload.get("format") != CHECKPOINT_FORMAT or payload.get("fingerprint") != fingerprint:
        if talk:
            tqdm.write(f"lipbench train: checkpoint {path} is from another configuration, code or data; starting from scratch")
        return None
    return payload
