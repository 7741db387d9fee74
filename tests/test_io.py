"""Atomic writes: complete files with normal permissions, nothing left after a failure."""

from __future__ import annotations

import os

import pytest

from lipbench.io import atomic_path, read_json, write_json_atomic


def test_atomic_json_is_complete_with_normal_permissions(tmp_path):
    target = tmp_path / "deep" / "metrics.json"
    write_json_atomic(target, {"accuracy": 0.5, "epochs": [1, 2]})
    assert read_json(target) == {"accuracy": 0.5, "epochs": [1, 2]}
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"old": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text('{"half": ')
            raise RuntimeError("killed")
    assert read_json(target) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    with pytest.raises(ValueError):
        write_json_atomic(target, {"nan": float("nan")})  # NaN is not JSON
    assert read_json(target) == {"old": 1}
