"""lipbench.dvc_cache: a stage's output folder as dvc.lock recorded it, read from DVC's cache."""

from __future__ import annotations

import os

import yaml

from lipbench.dvc_cache import file_md5, locked_output


def _output(root):
    folder = root / "out"
    (folder / "a" / "seed0").mkdir(parents=True)
    (folder / "a" / "seed0" / "w.bin").write_bytes(b"weights")
    (folder / "a" / "seed0" / "summary.json").write_text("{}")
    (folder / "b" / "seed0").mkdir(parents=True)
    (folder / "b" / "seed0" / "w.bin").write_bytes(b"other")
    return folder


def test_files_come_from_the_cache_by_the_locked_manifest(tmp_path, dvc_locked, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = _output(tmp_path)
    dvc_locked(tmp_path, "s@d", folder)
    locked = locked_output(tmp_path / "dvc.lock", "s@d", folder)
    assert locked is not None and locked.under("a/seed0") == ["a/seed0/summary.json", "a/seed0/w.bin"]
    assert locked.cached("a/seed0/w.bin").read_bytes() == b"weights"
    assert file_md5(locked.cached("b/seed0/w.bin")) == file_md5(folder / "b" / "seed0" / "w.bin")
    assert locked.cached("c/seed0/w.bin") is None
    assert locked.copy_folder("a/seed0", tmp_path / "copy")
    assert sorted(os.listdir(tmp_path / "copy")) == ["summary.json", "w.bin"]

    damaged = locked.cached("b/seed0/w.bin")
    damaged.chmod(0o644)
    damaged.write_bytes(b"changed")
    assert locked.cached("b/seed0/w.bin") is None  # not the recorded bytes: never handed out
    (tmp_path / "kept").mkdir()
    assert not locked.copy_folder("b/seed0", tmp_path / "kept") and (tmp_path / "kept").is_dir()


def test_no_lock_no_entry_or_no_dvc_repository_gives_none(tmp_path, dvc_locked, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = _output(tmp_path)
    assert locked_output(tmp_path / "dvc.lock", "s@d", folder) is None  # no lock
    (tmp_path / "dvc.lock").write_text(
        yaml.safe_dump({"schema": "2.0", "stages": {"s@d": {"outs": [{"path": "out", "md5": "0" * 32 + ".dir"}]}}})
    )
    assert locked_output(tmp_path / "dvc.lock", "s@d", folder) is None  # not a DVC repository
    dvc_locked(tmp_path, "s@d", folder)
    assert locked_output(tmp_path / "dvc.lock", "other@d", folder) is None  # no such stage
    assert locked_output(tmp_path / "dvc.lock", "s@d", tmp_path / "elsewhere") is None  # not its output
    (tmp_path / "dvc.lock").write_text(": not yaml [")
    assert locked_output(tmp_path / "dvc.lock", "s@d", folder) is None
