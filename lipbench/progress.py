"""tqdm settings shared by every progress bar."""

from __future__ import annotations

__all__ = ["tqdm_disable"]


def tqdm_disable(progress: bool) -> bool | None:
    """tqdm's ``disable`` flag: off when not asked for, and (``None``) off when the output is
    not a terminal, so DVC logs and CI output get one line per epoch, not redrawn bars."""
    return None if progress else True
