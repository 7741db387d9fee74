"""Every module here runs torch on one thread (tests/conftest.py's ``one_thread``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread: None) -> None:
    """Tiny models run faster on one thread and do not fight other processes."""
