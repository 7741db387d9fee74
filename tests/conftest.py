"""Helpers shared by every test folder: one torch thread, a guard against unpickling, and a
stage output locked in a DVC cache."""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Tiny models run much faster on one thread (and do not fight other processes)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Opt-in: torch runs on one thread for the whole module (make it autouse with a module fixture)."""
    with single_thread():
        yield


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any unpickling during the test fails it: ``pickle.load``, ``pickle.loads`` and ``torch.load``."""

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def lock_in_dvc_cache(root: Path, stage: str, output: Path) -> Path:
    """What ``dvc repro`` leaves of a stage's output folder: its files in DVC's cache and its
    ``.dir`` hash under ``stage`` in ``root/dvc.lock`` (a DVC repository without git is
    initialised in ``root`` first). Returns the cache's copy of the folder's manifest."""
    from dvc.repo import Repo

    repo = Repo(str(root)) if (root / ".dvc").is_dir() else Repo.init(str(root), no_scm=True)
    try:
        repo.add(str(output))
        folder_md5 = yaml.safe_load(output.with_name(output.name + ".dvc").read_text())["outs"][0]["md5"]
        manifest = Path(repo.cache.local.path) / folder_md5[:2] / folder_md5[2:]
    finally:
        repo.close()
    output.with_name(output.name + ".dvc").unlink()
    lock_path = root / "dvc.lock"
    lock = yaml.safe_load(lock_path.read_text()) if lock_path.is_file() else {"schema": "2.0", "stages": {}}
    lock["stages"][stage] = {"cmd": "lipbench", "outs": [{"path": os.path.relpath(output, root), "md5": folder_md5}]}
    lock_path.write_text(yaml.safe_dump(lock))
    return manifest


@pytest.fixture
def dvc_locked() -> Callable[[Path, str, Path], Path]:
    """``dvc_locked(root, stage, output)``: see :func:`lock_in_dvc_cache`."""
    return lock_in_dvc_cache
