"""The environment record every metric file carries: versions, device, git commit (and a hash
of lipbench's source), seed."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

_PACKAGES = ("torch", "torchvision", "numpy", "lipbench", "foolbox", "pyautoattack", "dvc")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def git_commit(directory: str | None = None) -> str | None:
    """The commit lipbench's source comes from: the checkout's HEAD, with ``-dirty`` appended
    when the package's own files (``directory``, default lipbench's folder; tracked or new)
    differ from it. Files a pipeline run writes elsewhere (dvc.lock, metric files) do not
    make it dirty. Outside a git checkout (a copy of it on an offline host):
    ``$LIPBENCH_GIT_COMMIT`` if set, else None."""
    cwd = directory or str(Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("LIPBENCH_GIT_COMMIT") or None
    return f"{commit}-dirty" if dirty else commit


@lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """Hash of lipbench's own source files: a code change invalidates resumable state."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def device_description(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def environment_record(device: torch.device | str = "cpu", seed: int | None = None) -> dict[str, Any]:
    """Versions, hardware, git commit and seed, for the ``environment`` field of metric files."""
    return {
        "versions": {name: package_version(name) for name in _PACKAGES} | {"python": platform.python_version()},
        "device": device_description(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "source_fingerprint": source_fingerprint(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "seed": seed,
    }
