"""Helpers shared by every test folder: one torch thread, and a guard against unpickling."""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator

import pytest
import torch


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
