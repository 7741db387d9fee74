"""Atomic file output: write to a temporary file beside the target, then rename.

A reader (or a rerun after a crash) sees either the old file or the complete new one,
never a half-written file. Also the folder operations the stages share (copy a folder into
place, drop the per-run folders of models no longer in a profile).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file (mkstemp gives 0600)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched. The
    result has the permissions of a normally created file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        if temporary_path.exists():
            os.chmod(temporary_path, _FILE_MODE)
        os.replace(temporary_path, target)
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as indented JSON (numbers stay numbers; NaN is refused)."""
    text = json.dumps(payload, indent=2, sort_keys=False, allow_nan=False) + "\n"
    write_text_atomic(path, text)


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def copy_file_atomic(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Copy ``source`` onto ``target`` (a temporary copy beside it, then renamed)."""
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)


def replace_folder(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Replace the folder ``target`` by a copy of ``source`` (copied beside it, then renamed)."""
    source, target = Path(source), Path(target)
    staging = target.with_name(f".{target.name}.copy")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def remove_unlisted_runs(root: str | os.PathLike[str], kept: set[Path]) -> None:
    """Under ``root`` (one folder per model, then ``seed<k>``), drop every ``<model>/seed<k>``
    folder not in ``kept``, then the model folders left empty."""
    root = Path(root)
    for folder in root.glob("*/seed*"):
        if folder not in kept:
            shutil.rmtree(folder)
    for folder in root.glob("*"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
