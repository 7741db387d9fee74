"""Peak resident memory of one training, in a process that may train several models in turn
(a train stage's worker): on Linux the high-water mark is reset before each training
(``/proc/self/clear_refs``) and read after it (``VmHWM``); elsewhere it is the process's peak."""

from __future__ import annotations

import re
import resource
from pathlib import Path

__all__ = ["reset_peak_rss", "peak_rss_mb"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Reset this process's resident-memory high-water mark; False where it cannot be reset."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """The high-water mark of resident memory (MiB) since the last reset, else since the start."""
    try:
        match = re.search(r"^VmHWM:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        match = None
    if match is not None:
        return int(match.group(1)) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
