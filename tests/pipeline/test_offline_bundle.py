"""tools/offline_bundle.py: the plan runs in order (training side by side), stops at the
first failure, and its archive parts are refused on import unless the run completed."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The tool with its checkout moved to ``tmp_path/checkout`` and tiny archive parts."""
    spec = importlib.util.spec_from_file_location("offline_bundle", ROOT / "tools/offline_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.setattr(module, "ROOT", checkout)
    monkeypatch.setattr(module, "CARRY", checkout / ".carry")
    monkeypatch.setattr(module, "PART_BYTES", 512)
    return module


def write_plan(module: ModuleType, stages: list[tuple[str, str]]) -> None:
    (module.CARRY / "site").mkdir(parents=True)
    plan = {
        "targets": ["pipelines/toy/dvc.yaml"],
        "git_commit": "abc123",
        "stages": [{"name": name, "cmd": command} for name, command in stages],
        "outputs": ["out"],
    }
    (module.CARRY / "plan.json").write_text(json.dumps(plan))


def read_archive(folder: Path) -> tarfile.TarFile:
    parts = sorted(folder.glob("outputs.tar.gz.part*"))
    return tarfile.open(fileobj=io.BytesIO(b"".join(part.read_bytes() for part in parts)))


def test_a_complete_run_archives_outputs_logs_and_stage_times_in_parts(bundle: ModuleType, tmp_path: Path) -> None:
    write_plan(
        bundle,
        [
            ("toy:prepare@a", "mkdir -p out && echo prepared > out/prepared"),
            # Side by side: each waits (up to 10 s) for the other's file, so run in sequence
            # they would not both find it.
            ("toy:train@a-x-0", "touch out/x; for i in $(seq 100); do [ -e out/y ] && break; sleep 0.1; done; ls out/y"),
            ("toy:train@a-y-0", "touch out/y; for i in $(seq 100); do [ -e out/x ] && break; sleep 0.1; done; ls out/x"),
            ("toy:certify@a", 'head -c 3000 /dev/urandom > out/blob && echo "$LIPBENCH_GIT_COMMIT" > out/commit'),
        ],
    )
    assert bundle.run(jobs=2, out=tmp_path / "parts") == 0
    assert len(list((tmp_path / "parts").glob("outputs.tar.gz.part*"))) > 1  # 3 kB of noise in 512-byte parts
    with read_archive(tmp_path / "parts") as tar:
        names = set(tar.getnames())
        summary = json.loads(tar.extractfile(".carry/logs/run.json").read())
        commit = tar.extractfile("out/commit").read().decode().strip()
    assert {"out/prepared", "out/x", "out/y", "out/blob"} <= names
    assert commit == "abc123"
    assert summary["complete"] is True
    assert [stage["name"] for stage in summary["stages"]] == [
        "toy:prepare@a",
        "toy:train@a-x-0",
        "toy:train@a-y-0",
        "toy:certify@a",
    ]
    assert all(stage["exit_status"] == 0 and stage["seconds"] >= 0 for stage in summary["stages"])


def test_a_failing_stage_stops_the_run_and_its_archive_is_not_imported(bundle: ModuleType, tmp_path: Path, capsys) -> None:
    write_plan(
        bundle,
        [
            ("toy:prepare@a", "mkdir -p out && touch out/prepared"),
            ("toy:train@a-x-0", "echo diverged >&2; exit 3"),
            ("toy:certify@a", "touch out/certified"),
        ],
    )
    assert bundle.run(jobs=1, out=tmp_path / "parts") == 1
    assert "diverged" in capsys.readouterr().out  # the failed stage's log is shown
    with read_archive(tmp_path / "parts") as tar:
        summary = json.loads(tar.extractfile(".carry/logs/run.json").read())
        assert "out/certified" not in tar.getnames()
    assert summary["complete"] is False
    assert [stage["exit_status"] for stage in summary["stages"]] == [0, 3]
    (bundle.ROOT / "out").rename(tmp_path / "moved")  # what import would restore
    with pytest.raises(SystemExit, match="did not complete"):
        bundle.import_outputs(tmp_path / "parts")
    assert not (bundle.ROOT / "out").exists()


def test_a_run_stopped_at_its_deadline_resumes_from_its_archive_on_a_fresh_machine(bundle: ModuleType, tmp_path: Path) -> None:
    write_plan(
        bundle,
        [
            ("toy:prepare@a", "mkdir -p out && echo prepared > out/prepared"),
            ("toy:train@a-y-0", "echo once >> out/y"),
            # First time: leaves a checkpoint-like marker and runs past the deadline.
            ("toy:train@a-x-0", "if [ -e out/marker ]; then touch out/x; else touch out/marker; sleep 60; fi"),
            ("toy:certify@a", "ls out/x out/prepared && touch out/certified"),
        ],
    )
    assert bundle.run(jobs=2, out=tmp_path / "first", deadline=1.0) == 1
    with read_archive(tmp_path / "first") as tar:
        first = json.loads(tar.extractfile(".carry/logs/run.json").read())
    assert first["complete"] is False
    statuses = [(stage["name"], stage["exit_status"]) for stage in first["stages"]]
    assert statuses == [("toy:prepare@a", 0), ("toy:train@a-y-0", 0), ("toy:train@a-x-0", None)]
    assert first["total_seconds"] < 30  # the sleeping stage was stopped, not waited for
    with pytest.raises(SystemExit, match="did not complete"):
        bundle.import_outputs(tmp_path / "first")
    for folder in ("out", ".carry/logs"):  # a fresh machine: only the plan and the archive
        shutil.rmtree(bundle.ROOT / folder)
    assert bundle.run(jobs=2, out=tmp_path / "second", resume=tmp_path / "first") == 0
    assert (bundle.ROOT / "out/y").read_text() == "once\n"  # a finished stage is not rerun
    with read_archive(tmp_path / "second") as tar:
        second = json.loads(tar.extractfile(".carry/logs/run.json").read())
        assert {"out/x", "out/certified"} <= set(tar.getnames())
    assert second["complete"] is True
    names = [stage["name"] for stage in second["stages"]]
    assert names == ["toy:prepare@a", "toy:train@a-y-0", "toy:train@a-x-0", "toy:certify@a"]  # plan order
    assert second["total_seconds"] >= first["total_seconds"]


def test_resuming_the_archive_of_another_plan_is_refused(bundle: ModuleType, tmp_path: Path) -> None:
    write_plan(bundle, [("toy:prepare@a", "mkdir -p out && touch out/p")])
    assert bundle.run(jobs=1, out=tmp_path / "first") == 0
    (bundle.CARRY / "plan.json").write_text(
        json.dumps({"targets": [], "git_commit": "x", "stages": [{"name": "toy:prepare@b", "cmd": "true"}], "outputs": ["out"]})
    )
    with pytest.raises(SystemExit, match="holds a run of another plan"):
        bundle.run(jobs=1, out=tmp_path / "second", resume=tmp_path / "first")


def test_parts_left_by_an_earlier_run_in_the_same_folder_are_replaced(bundle: ModuleType, tmp_path: Path) -> None:
    write_plan(bundle, [("toy:prepare@a", "mkdir -p out && touch out/p")])
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "outputs.tar.gz.part07").write_bytes(b"a larger, older run")
    assert bundle.run(jobs=1, out=parts) == 0
    assert not (parts / "outputs.tar.gz.part07").exists()
    with read_archive(parts) as tar:
        assert "out/p" in tar.getnames()


def test_archives_with_paths_outside_the_checkout_are_refused(bundle: ModuleType, tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (parts / "outputs.tar.gz.part00").write_bytes(data.getvalue())
    with pytest.raises(SystemExit, match="refusing archive member '../escaped'"):
        bundle.import_outputs(parts)
    assert not (tmp_path / "escaped").exists()


def test_import_without_parts_names_the_folder(bundle: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=f"no outputs.tar.gz.part\\* files in {tmp_path}"):
        bundle.import_outputs(tmp_path)


def test_the_plan_of_the_real_pipelines_prepares_then_trains_then_evaluates_without_the_report(bundle: ModuleType) -> None:
    dvc = Path(sys.executable).parent / "dvc"
    listings = []
    for target in ("pipelines/paper/dvc.yaml:verify@mnist", "pipelines/paper/dvc.yaml:certify@mnist"):
        dry = subprocess.run(
            [str(dvc), "repro", "--dry", "--force", target], cwd=ROOT, capture_output=True, text=True, check=True
        )
        listings.append(bundle.parse_dry_run(dry.stdout))
    stages = bundle.plan_stages(listings)
    kinds = [stage["name"].split(":")[1].split("@")[0] for stage in stages]
    methods = ["adv", "lip1_log", "gnp_log", "gnp_hin", "hkr", "hkr_m2_12"]  # the paper profile's
    assert kinds == ["validate", "prepare"] + ["train"] * len(methods) + ["certify", "attack", "verify"]  # once each
    assert {stage["name"].split("@")[1] for stage in stages if "train@" in stage["name"]} == {f"mnist-{m}-0" for m in methods}
    assert all(
        stage["cmd"].startswith("lipbench ") and "--params pipelines/paper/params.yaml" in stage["cmd"] for stage in stages
    )
    whole = subprocess.run(
        [str(dvc), "repro", "--dry", "--force", "dvc.yaml"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "report" in [stage["name"] for stage in bundle.parse_dry_run(whole.stdout)]
    assert "report" not in [stage["name"] for stage in bundle.plan_stages([bundle.parse_dry_run(whole.stdout)])]
