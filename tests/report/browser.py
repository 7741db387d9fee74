"""Headless Chromium with the network off, for the report's page checks.

The tests that use it skip when no Chromium is installed, naming how to get one (Debian:
``apt-get install -y --no-install-recommends chromium``), unless ``LIPBENCH_REQUIRE_CHROMIUM=1``
(set by ``.ci/run``, which installs it): then a missing browser fails them.
``LIPBENCH_CHROMIUM=/path/to/chrome`` picks another binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REQUIRE_ENV = "LIPBENCH_REQUIRE_CHROMIUM"
BINARY_ENV = "LIPBENCH_CHROMIUM"
#: Headless, sandbox and GPU off (containers), no background traffic, and no network at
#: all: every connection goes to a closed local port and no host name resolves.
OFFLINE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


def chromium() -> str:
    """The Chromium binary, or skip (fail under ``LIPBENCH_REQUIRE_CHROMIUM=1``) with how to install it."""
    candidates = [os.environ.get(BINARY_ENV, ""), "chromium", "chromium-browser", "google-chrome"]
    for candidate in candidates:
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    reason = (
        "headless Chromium not found: install it (Debian/Ubuntu: `apt-get install -y --no-install-recommends chromium`) "
        f"or set {BINARY_ENV}=/path/to/chrome; .ci/run installs it and sets {REQUIRE_ENV}=1"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _run(page: Path, *flags: str, budget_ms: int = 10000) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="lipbench-chromium-") as profile:
        command = [chromium(), *OFFLINE_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *flags]
        result = subprocess.run([*command, page.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        raise AssertionError(f"chromium exited {result.returncode} on {page}:\n{result.stderr[-3000:]}")
    return result


def dump_dom(page: Path) -> str:
    """The page's DOM after its scripts ran (virtual time, so no wall-clock wait)."""
    return _run(page, "--dump-dom").stdout


def screenshot(page: Path, target: Path, width: int = 1280, height: int = 1600) -> Path:
    """A PNG of the top of ``page`` at ``width`` x ``height``; its path is printed for the log."""
    _run(page, f"--window-size={width},{height}", f"--screenshot={target}")
    if not target.is_file():
        raise AssertionError(f"chromium wrote no screenshot of {page}")
    print(f"screenshot of {page.name}: {target}")
    return target


def ink(png: Path) -> tuple[float, int]:
    """(fraction of pixels that differ from the page background, number of distinct colours)."""
    from PIL import Image

    with Image.open(png) as image:
        pixels = image.convert("RGB")
        colors = pixels.getcolors(maxcolors=1 << 24) or []
    total = sum(count for count, _ in colors)
    background = max(colors)[0] if colors else total
    return (total - background) / max(total, 1), len(colors)
