"""Exceptions raised by :mod:`lipbench.data` (each message is the whole story)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "DataError",
    "ChecksumError",
    "DatasetUnavailableError",
    "DatasetNotPreparedError",
    "MIRROR_ENV_VAR",
]

MIRROR_ENV_VAR = "LIPBENCH_DATA_MIRROR"


class DataError(Exception):
    """Base class of the data errors below."""


class ChecksumError(DataError):
    """A file's md5 differs from the expected one (corrupt, truncated or wrong file)."""

    def __init__(self, path: str | Path, expected: str, actual: str, origin: str = "") -> None:
        self.path = str(path)
        self.expected = expected
        self.actual = actual
        where = f" ({origin})" if origin else ""
        super().__init__(
            f"checksum mismatch for {self.path}{where}: expected md5 {expected}, got md5 {actual}. "
            "The file is corrupt, truncated or not the published one; it was not kept. "
            "Replace it with the original file and prepare again."
        )


class DatasetUnavailableError(DataError):
    """A dataset's files can be neither found in the mirror nor downloaded."""

    def __init__(
        self,
        dataset: str,
        reason: str,
        files: Sequence[tuple[str, Sequence[str]]] = (),
        mirror: Path | None = None,
    ) -> None:
        self.dataset = dataset
        self.reason = reason
        self.files = [(path, list(urls)) for path, urls in files]
        self.urls = [url for _, urls in self.files for url in urls]
        self.mirror = mirror
        lines = [f"dataset {dataset!r} is unavailable: {reason}"]
        if self.files:
            lines.append("It needs these files (path in a torchvision dataset root <- download URLs):")
            for path, urls in self.files:
                lines.append(f"  {path} <- {' | '.join(urls) if urls else '(no public URL)'}")
        example = Path(str(mirror)) if mirror is not None else Path("/path/to/mirror")
        lines.append(
            "To work offline, put the ORIGINAL files in a folder with torchvision's layout and set "
            f"the environment variable {MIRROR_ENV_VAR}={example} (or pass the mirror argument of prepare_dataset; "
            "an explicit mirror argument wins over the environment variable). "
            "When a mirror is set the network is never used."
        )
        if self.files:
            lines.append(f"Expected mirror layout: {example}/{self.files[0][0]}, ...")
        super().__init__("\n".join(lines))


class DatasetNotPreparedError(DataError):
    """``load`` was called before ``prepare`` (or with other parameters)."""

    def __init__(self, dataset: str, data_dir: Path, detail: str) -> None:
        self.dataset = dataset
        self.data_dir = data_dir
        message = (
            f"dataset {dataset!r} is not prepared in {data_dir}: {detail}. "
            f"Prepare it first with `lipbench prepare --dataset {dataset}` "
            f"(or lipbench.data.prepare_dataset({dataset!r}, data_dir, params))."
        )
        super().__init__(message)
