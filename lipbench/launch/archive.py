"""A run's outputs as one gzipped tar, split into parts only when asked (some transfers cap
a file's size), and read back safely: members are checked before anything is written.

Standard library only. The archive is ``outputs.tar.gz`` or, split, ``outputs.tar.gz.part00``,
``.part01``, ... in one folder; members are paths relative to the checkout's root.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from lipbench.launch.plan import LaunchError

__all__ = ["ARCHIVE", "archive_files", "open_archive", "read_member_json", "safe_members", "write_archive"]

ARCHIVE = "outputs.tar.gz"


def archive_files(folder: Path) -> list[Path]:
    """The archive in ``folder``: the whole file, or its parts in order."""
    whole = folder / ARCHIVE
    parts = sorted(folder.glob(f"{ARCHIVE}.part*"))
    if whole.is_file() and parts:
        raise LaunchError(f"{folder} holds both {ARCHIVE} and {ARCHIVE}.part*; keep the files of one run only")
    return [whole] if whole.is_file() else parts


def write_archive(root: Path, paths: Sequence[str], out: Path, part_bytes: int | None = None) -> list[str]:
    """Archive ``paths`` (relative to ``root``; missing ones are skipped) into ``out``: one
    file, or parts of at most ``part_bytes``. Replaces an earlier run's archive in ``out``.
    Returns the names of the files written."""
    if part_bytes is not None and part_bytes < 1:
        raise LaunchError(f"the part size must be at least 1 byte, got {part_bytes}")
    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / ARCHIVE, *out.glob(f"{ARCHIVE}.part*")]:  # an earlier, larger run's parts would corrupt this one
        stale.unlink(missing_ok=True)
    whole = out / ARCHIVE
    with tarfile.open(whole, "w:gz") as tar:
        for path in paths:
            if (root / path).exists():
                tar.add(root / path, arcname=PurePosixPath(path).as_posix())
    if part_bytes is None:
        return [whole.name]
    names = []
    with open(whole, "rb") as source:
        while chunk := source.read(part_bytes):
            part = out / f"{ARCHIVE}.part{len(names):02d}"
            part.write_bytes(chunk)
            names.append(part.name)
    whole.unlink()
    return names


def safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every member, if all are plain files or folders inside the checkout; else an error naming one."""
    members = tar.getmembers()
    for member in members:
        parts = PurePosixPath(member.name).parts
        if member.name.startswith(("/", "\\")) or ".." in parts or not (member.isfile() or member.isdir()):
            raise LaunchError(f"refusing archive member {member.name!r} (only files and folders inside the checkout)")
    return members


@contextlib.contextmanager
def open_archive(folder: Path) -> Iterator[tarfile.TarFile]:
    """The archive in ``folder`` (its parts joined in a temporary file), open for reading."""
    files = archive_files(folder)
    if not files:
        raise LaunchError(f"no {ARCHIVE} or {ARCHIVE}.part* files in {folder}")
    with tempfile.TemporaryDirectory() as scratch:
        joined = Path(scratch) / ARCHIVE
        with open(joined, "wb") as target:
            for part in files:
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, target)
        with tarfile.open(joined) as tar:
            yield tar


def read_member_json(tar: tarfile.TarFile, name: str, folder: Path) -> Any:
    """A JSON member of the archive (an error naming ``folder`` when it is missing)."""
    try:
        handle = tar.extractfile(name)
    except KeyError:
        handle = None
    if handle is None:
        raise LaunchError(f"{folder} holds no {name}; not the archive of an offline run")
    return json.loads(handle.read())
