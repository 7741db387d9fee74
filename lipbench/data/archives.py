"""Getting original files: checksums, the offline mirror, downloads and staged extraction.

A file is looked for, in order: already in ``data_dir/raw`` with the right md5 (reused); in
the mirror (copied, never written to; the network is then never used); at its download URLs
(short timeout). Every copy or download goes through a temporary file that is renamed only
after its md5 matched, so a corrupt or truncated file never stays in ``raw``.

The mirror is the ``mirror`` argument when given (``""`` means none), else the environment
variable ``LIPBENCH_DATA_MIRROR``. It is a torchvision dataset root holding the ORIGINAL files,
e.g. ``MNIST/raw/train-images-idx3-ubyte.gz`` or ``cifar-10-python.tar.gz``.

Tests replace :func:`download` (module attribute, looked up at call time) to simulate the
network, and a dataset's ``checksums`` mapping to accept generated files.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lipbench.data.base import BaseDataset
from lipbench.data.errors import MIRROR_ENV_VAR, ChecksumError, DatasetUnavailableError
from lipbench.io import atomic_path

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "DownloadError",
    "RemoteDataset",
    "Resource",
    "copy_tree_staged",
    "download",
    "extract_staged",
    "fetch_file",
    "md5_file",
    "resolve_mirror",
    "verify_folder",
    "verify_md5",
]

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 15.0  # per connection attempt and per read: fail fast when offline
USER_AGENT = "lipbench (torchvision-compatible downloader)"


class DownloadError(OSError):
    """A server answered, but not with the file (e.g. an HTML quota page)."""


@dataclass(frozen=True)
class Resource:
    """One original file: its path inside a torchvision root and its download URLs."""

    path: str
    urls: tuple[str, ...]

    @property
    def filename(self) -> str:
        return PurePosixPath(self.path).name


def md5_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str, name: str | Path, origin: str = "") -> str:
    """ChecksumError naming ``name`` with both checksums unless ``path`` has md5 ``expected``."""
    actual = md5_file(path)
    if actual != expected:
        raise ChecksumError(name, expected, actual, origin)
    return actual


def download(url: str, destination: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Write ``url``'s content to ``destination`` (urllib; ``timeout`` per socket operation)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    log.info("downloading %s", url)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if "text/html" in response.headers.get("Content-Type", ""):
            raise DownloadError(f"{url} answered with an HTML page (quota or confirmation page), not the file")
        with open(destination, "wb") as handle:
            shutil.copyfileobj(response, handle, 1 << 20)


def resolve_mirror(
    dataset: str, mirror: str | os.PathLike[str] | None, resources: Sequence[Resource], raw_root: Path
) -> Path | None:
    """The mirror folder to use: the argument wins over ``LIPBENCH_DATA_MIRROR``; ``""`` is none."""
    origin = "mirror argument"
    if mirror is None:
        mirror = os.environ.get(MIRROR_ENV_VAR) or None
        origin = f"environment variable {MIRROR_ENV_VAR}"
    if mirror is None or str(mirror) == "":
        return None
    path = Path(mirror).expanduser()
    if not path.is_dir():
        raise DatasetUnavailableError(
            dataset, f"the mirror folder {path} (from the {origin}) does not exist", _listing(resources), path
        )
    if raw_root.is_dir() and path.resolve() == raw_root.resolve():
        raise ValueError(f"the mirror {path} must not be the data folder's own raw/ folder")
    return path


def _listing(resources: Sequence[Resource]) -> list[tuple[str, Sequence[str]]]:
    return [(resource.path, resource.urls) for resource in resources]


def fetch_file(
    dataset: str,
    resource: Resource,
    expected_md5: str,
    raw_root: Path,
    mirror: Path | None,
    all_resources: Sequence[Resource] = (),
) -> dict[str, Any]:
    """Make ``raw_root/resource.path`` hold the verified original file; return a record of it."""
    listing = _listing(all_resources or [resource])
    target = raw_root / resource.path
    record: dict[str, Any] = {"file": resource.path, "md5": expected_md5, "verified": True}
    if target.is_file():
        if md5_file(target) == expected_md5:
            log.info("%s: reusing verified %s", dataset, target)
            return record
        log.warning("%s: %s has the wrong md5; fetching it again", dataset, target)
        target.unlink()
    if mirror is not None:
        source = mirror / resource.path
        if not source.is_file():
            raise DatasetUnavailableError(
                dataset,
                f"the mirror {mirror} has no {resource.path} (with a mirror set the network is not used: "
                f"add the file to the mirror, or unset {MIRROR_ENV_VAR} / pass mirror='' to download)",
                listing,
                mirror,
            )
        with atomic_path(target) as temporary:
            shutil.copyfile(source, temporary)
            verify_md5(temporary, expected_md5, source, "in the mirror")
        log.info("%s: copied %s from the mirror", dataset, resource.path)
        return record
    failures: list[str] = []
    checksum_error: ChecksumError | None = None
    for url in resource.urls:
        try:
            with atomic_path(target) as temporary:
                download(url, temporary, timeout=DOWNLOAD_TIMEOUT_S)
                verify_md5(temporary, expected_md5, url, "downloaded")
            return record
        except ChecksumError as error:
            checksum_error = checksum_error or error
            failures.append(f"{url}: {error}")
        except (OSError, http.client.HTTPException, ValueError) as error:
            failures.append(f"{url}: {type(error).__name__}: {error}")
    if checksum_error is not None:
        raise checksum_error
    reason = "downloading failed and no mirror is set (" + "; ".join(failures or ["no download URL"]) + ")"
    raise DatasetUnavailableError(dataset, reason, listing, None)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def extract_staged(archive: Path, member_dir: str, root: Path, verify: Callable[[Path], None]) -> Path:
    """Extract ``archive`` (tar or zip) holding ``member_dir/``; verify it; move it to ``root``.

    Extraction happens in a hidden folder in ``root``; nothing is left there on error.
    """
    final = root / member_dir
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{member_dir}.", suffix=".partial", dir=root))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(stage)
        else:
            with tarfile.open(archive) as handle:
                handle.extractall(stage, filter="data")
        extracted = stage / member_dir
        if not extracted.is_dir():
            raise ValueError(f"{archive} does not contain the folder {member_dir}/")
        verify(extracted)
        _remove(final)
        os.replace(extracted, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return final


def copy_tree_staged(source: Path, final: Path, verify: Callable[[Path], None]) -> Path:
    """Copy folder ``source`` to ``final`` through a hidden staging folder, verifying it first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        copied = stage / final.name
        shutil.copytree(source, copied)
        verify(copied)
        _remove(final)
        os.replace(copied, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return final


def verify_folder(folder: Path, checksums: Mapping[str, str], label: str) -> None:
    """ChecksumError (or FileNotFoundError) unless each named file in ``folder`` matches."""
    for name, expected in checksums.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{label}: {name} is missing from {folder}")
        verify_md5(path, expected, f"{label}/{name}")


class RemoteDataset(BaseDataset):
    """A dataset made from original files fetched into ``data_dir/raw`` (torchvision layout).

    ``checksums`` maps each file name to its md5. Production values are torchvision's own;
    tests replace the mapping (``monkeypatch.setattr(dataset, "checksums", {...})``) to
    prepare small generated files.
    """

    resources: Sequence[Resource] = ()
    checksums: Mapping[str, str] = {}

    def _created_dirs(self, data_dir: Path) -> list[Path]:
        raw = data_dir / "raw"
        folders = super()._created_dirs(data_dir)
        for resource in self.resources:
            for parent in (raw / resource.path).parents:
                if parent == raw:
                    break
                folders.append(parent)
        return folders

    def resolve_mirror(self, data_dir: Path, mirror: str | os.PathLike[str] | None) -> Path | None:
        return resolve_mirror(self.name, mirror, self.resources, data_dir / "raw")

    def fetch(self, resource: Resource, data_dir: Path, mirror: Path | None) -> dict[str, Any]:
        return fetch_file(self.name, resource, self.checksums[resource.filename], data_dir / "raw", mirror, self.resources)
