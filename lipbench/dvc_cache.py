"""A stage's output folder as DVC last locked it, read back from DVC's cache.

DVC removes a stage's outputs before it reruns the stage, and a clone restored from DVC's
cache (``dvc pull``, or a copied cache and ``dvc repro``) has no copies of its own outside
them. So that such a clone's first change still recomputes only what changed, the stages
look up each unchanged model's previous outputs here: ``dvc.lock`` names the output
folder's ``.dir`` manifest, which maps every file to its copy in the cache.

Nothing here is needed to run lipbench without DVC: outside a DVC repository, without a
lock entry or with the cache missing a file, :func:`locked_output` returns None or a folder
without that file, and the caller recomputes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

__all__ = ["LockedOutput", "locked_output", "file_md5"]


def file_md5(path: str | os.PathLike[str]) -> str:
    """The MD5 of a file's bytes: DVC's address of the file in its cache."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LockedOutput:
    """Files of one locked output folder: path relative to the folder -> (MD5, cache file)."""

    def __init__(self, files: dict[str, tuple[str, Path]]) -> None:
        self._files = files

    def cached(self, relpath: str) -> Path | None:
        """The cache's copy of ``relpath`` when present and intact; else None."""
        entry = self._files.get(relpath)
        if entry is None or not entry[1].is_file() or file_md5(entry[1]) != entry[0]:
            return None
        return entry[1]

    def under(self, prefix: str) -> list[str]:
        """The relative paths below the folder ``prefix`` (e.g. ``hkr/seed0``)."""
        start = prefix.rstrip("/") + "/"
        return sorted(relpath for relpath in self._files if relpath.startswith(start))

    def copy_folder(self, prefix: str, target: str | os.PathLike[str]) -> bool:
        """Replace the folder ``target`` by the files below ``prefix`` (staged beside it,
        then renamed); False, leaving ``target`` alone, when one of them is not cached."""
        sources = {relpath: self.cached(relpath) for relpath in self.under(prefix)}
        if not sources or any(source is None for source in sources.values()):
            return False
        target = Path(target)
        staging = target.with_name(f".{target.name}.locked")
        shutil.rmtree(staging, ignore_errors=True)
        for relpath, source in sources.items():
            copy = staging / relpath[len(prefix.rstrip("/")) + 1 :]
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, copy)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return True


def _cache_dir(start: Path) -> Path | None:
    """DVC's file cache (``.../files/md5``) of the repository holding ``start``, as DVC's
    configuration resolves it; None without DVC or outside a DVC repository."""
    try:
        from dvc.exceptions import NotDvcRepoError
        from dvc.repo import Repo
    except ImportError:
        return None
    try:
        repo = Repo(str(start))
    except NotDvcRepoError:
        return None
    try:
        return Path(repo.cache.local.path)
    finally:
        repo.close()


def _locked_hash(lock: dict[str, Any], stage: str, output: Path) -> str | None:
    """The ``.dir`` MD5 that ``lock`` records for ``stage``'s output folder ``output``."""
    entry = (lock.get("stages") or {}).get(stage) or {}
    for out in entry.get("outs") or []:
        md5 = out.get("md5") if isinstance(out, dict) else None
        if isinstance(md5, str) and md5.endswith(".dir") and Path(out.get("path", "")).resolve() == output.resolve():
            return md5.removesuffix(".dir")
    return None


def locked_output(dvc_lock: str | os.PathLike[str], stage: str, output: str | os.PathLike[str]) -> LockedOutput | None:
    """``stage``'s output folder ``output`` as ``dvc_lock`` last recorded it, or None when
    there is no such lock entry or cached manifest. Output paths in the lock are relative to
    the stage's working directory, which is this process's (DVC runs the stage there)."""
    dvc_lock, output = Path(dvc_lock), Path(output)
    if not dvc_lock.is_file():
        return None
    try:
        lock = yaml.safe_load(dvc_lock.read_text())
    except yaml.YAMLError:
        return None
    folder_md5 = _locked_hash(lock if isinstance(lock, dict) else {}, stage, output)
    cache = _cache_dir(dvc_lock.parent) if folder_md5 else None
    if cache is None:
        return None
    manifest = cache / folder_md5[:2] / f"{folder_md5[2:]}.dir"
    try:
        entries = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    files = {
        entry["relpath"]: (entry["md5"], cache / entry["md5"][:2] / entry["md5"][2:])
        for entry in entries
        if isinstance(entry, dict) and isinstance(entry.get("relpath"), str) and isinstance(entry.get("md5"), str)
    }
    return LockedOutput(files)
