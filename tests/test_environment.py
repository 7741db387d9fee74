"""The environment record: which commit (and source) the numbers come from."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lipbench.environment import environment_record, git_commit, source_fingerprint

commit_of = git_commit.__wrapped__  # uncached


def git(folder: Path, *arguments: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *arguments]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with a package folder and a pipeline output beside it."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    git(tmp_path, "init", "-q")
    (tmp_path / "package").mkdir()
    (tmp_path / "package/code.py").write_text("x = 1\n")
    (tmp_path / "dvc.lock").write_text("old\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "one")
    return tmp_path


def test_outputs_written_beside_the_package_leave_the_commit_clean(checkout: Path) -> None:
    head = git(checkout, "rev-parse", "HEAD")
    (checkout / "dvc.lock").write_text("new\n")  # what every pipeline run does
    (checkout / "metrics.json").write_text("{}\n")
    assert commit_of(str(checkout / "package")) == head


@pytest.mark.parametrize("change", ["edit", "new file"])
def test_changed_package_source_marks_the_commit_dirty(checkout: Path, change: str) -> None:
    head = git(checkout, "rev-parse", "HEAD")
    target = checkout / "package" / ("code.py" if change == "edit" else "extra.py")
    target.write_text("x = 2\n")
    assert commit_of(str(checkout / "package")) == f"{head}-dirty"


def test_outside_a_checkout_the_commit_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository is found above
    copy = tmp_path / "copy"
    copy.mkdir()
    monkeypatch.delenv("LIPBENCH_GIT_COMMIT", raising=False)
    assert commit_of(str(copy)) is None
    monkeypatch.setenv("LIPBENCH_GIT_COMMIT", "abc123")
    assert commit_of(str(copy)) == "abc123"


def test_the_record_names_the_source_it_ran() -> None:
    record = environment_record("cpu", seed=3)
    assert record["source_fingerprint"] == source_fingerprint()
    assert record["seed"] == 3 and record["device"].startswith("cpu")
