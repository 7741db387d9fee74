"""The offline bundle (lipbench/launch/bundle.py, run by tools/offline_bundle.py): its plan
comes from DVC's stage graph; the host runs it with the launcher's runner (what a job needs
first, side by side otherwise), archives outputs, logs and records, stops at a deadline and
resumes on a fresh copy; an incomplete or unsafe archive is refused on import; a complete
one is committed here so that ``dvc status`` is clean."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from lipbench.launch import bundle
from lipbench.launch.archive import open_archive
from lipbench.launch.plan import Job, LaunchError, Plan
from lipbench.launch.stages import DvcStages

REPO = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).parent / "dvc")
RUN_RECORD = ".carry/launch/run.json"


def meet(mine: str, other: str) -> str:
    """Touch ``mine``, wait (up to 20 s) for ``other``; fail when it never came."""
    return f"touch {mine}; for i in $(seq 200); do [ -e {other} ] && break; sleep 0.1; done; ls {other}"


def write_plan(root: Path, jobs: list[tuple[str, str, tuple[str, ...]]]) -> Plan:
    """A plan of shell jobs (name, command, needs) in ``root/.carry``, as ``make`` leaves it."""
    plan = Plan(
        tuple(Job(name, (command,), needs=needs) for name, command, needs in jobs),
        ("pipelines/toy/dvc.yaml",),
        extra={"git_commit": "abc123", "outputs": ["out"]},
    )
    (root / ".carry/site").mkdir(parents=True, exist_ok=True)
    plan.write(root / ".carry/plan.json")
    return plan


def run_record(folder: Path) -> dict:
    with open_archive(folder) as tar:
        return json.loads(tar.extractfile(RUN_RECORD).read())


def states(summary: dict) -> list[tuple[str, str]]:
    return [(record["name"], record["state"]) for record in summary["records"]]


def test_a_complete_run_archives_outputs_logs_and_records_in_parts_of_the_size_asked(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    write_plan(
        root,
        [
            ("toy:prepare@a", "mkdir -p out && echo prepared > out/prepared", ()),
            # Side by side: each waits (up to 20 s) for the other's file; one after the other they would fail.
            ("toy:train@a-x-0", meet("out/x", "out/y"), ("toy:prepare@a",)),
            ("toy:train@a-y-0", meet("out/y", "out/x"), ("toy:prepare@a",)),
            ("toy:certify@a", 'head -c 3000 /dev/urandom > out/blob && echo "$LIPBENCH_GIT_COMMIT" > out/commit',
             ("toy:train@a-x-0", "toy:train@a-y-0")),
        ],
    )  # fmt: skip
    assert bundle.run(root, jobs=2, out=tmp_path / "parts", part_bytes=512) == 0
    assert len(list((tmp_path / "parts").glob("outputs.tar.gz.part*"))) > 1  # 3 kB of noise in 512-byte parts
    with open_archive(tmp_path / "parts") as tar:
        names = set(tar.getnames())
        summary = json.loads(tar.extractfile(RUN_RECORD).read())
        commit = tar.extractfile("out/commit").read().decode().strip()
    assert {"out/prepared", "out/x", "out/y", "out/blob", ".carry/launch/logs/toy_train@a-x-0.log"} <= names
    assert commit == "abc123"
    assert summary["complete"] is True
    assert states(summary) == [
        (name, "succeeded") for name in ("toy:prepare@a", "toy:train@a-x-0", "toy:train@a-y-0", "toy:certify@a")
    ]
    assert all(record["exit_status"] == 0 and record["seconds"] >= 0 for record in summary["records"])


def test_without_a_part_size_the_archive_is_one_file_replacing_an_earlier_run_s(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    write_plan(root, [("toy:prepare@a", "mkdir -p out && touch out/p", ())])
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "outputs.tar.gz.part07").write_bytes(b"a larger, older run")
    assert bundle.run(root, jobs=1, out=parts) == 0
    assert sorted(path.name for path in parts.iterdir()) == ["outputs.tar.gz"]
    with open_archive(parts) as tar:
        assert "out/p" in tar.getnames()


def test_a_failing_stage_stops_its_dependants_and_its_archive_is_not_imported(tmp_path: Path, capsys) -> None:
    root = tmp_path / "checkout"
    write_plan(
        root,
        [
            ("toy:prepare@a", "mkdir -p out && touch out/prepared", ()),
            ("toy:train@a-x-0", "echo diverged >&2; exit 3", ("toy:prepare@a",)),
            ("toy:certify@a", "touch out/certified", ("toy:train@a-x-0",)),
        ],
    )
    assert bundle.run(root, jobs=1, out=tmp_path / "parts") == 1
    assert "diverged" in capsys.readouterr().out  # the failed stage's log is shown
    summary = run_record(tmp_path / "parts")
    assert summary["complete"] is False
    assert states(summary) == [("toy:prepare@a", "succeeded"), ("toy:train@a-x-0", "failed"), ("toy:certify@a", "not run")]
    assert summary["records"][1]["exit_status"] == 3
    shutil.rmtree(root / "out")
    with pytest.raises(LaunchError, match="did not complete"):
        bundle.import_outputs(root, tmp_path / "parts")
    assert not (root / "out").exists()  # nothing unpacked


def test_a_run_stopped_at_its_deadline_resumes_from_its_archive_on_a_fresh_machine(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    write_plan(
        root,
        [
            ("toy:prepare@a", "mkdir -p out && echo prepared > out/prepared", ()),
            ("toy:train@a-y-0", "echo once >> out/y", ("toy:prepare@a",)),
            # First time: once y is done, leaves a checkpoint-like marker and runs far past the deadline.
            ("toy:train@a-x-0", "until [ -e out/y ]; do sleep 0.1; done; if [ -e out/marker ]; then touch out/x; "
             "else touch out/marker; sleep 600; fi", ("toy:prepare@a",)),
            ("toy:certify@a", "ls out/x out/prepared && touch out/certified", ("toy:prepare@a", "toy:train@a-x-0")),
        ],
    )  # fmt: skip
    assert bundle.run(root, jobs=2, out=tmp_path / "first", deadline=15.0) == 1
    first = run_record(tmp_path / "first")
    assert first["complete"] is False
    assert states(first) == [
        ("toy:prepare@a", "succeeded"), ("toy:train@a-y-0", "succeeded"), ("toy:train@a-x-0", "interrupted"),
        ("toy:certify@a", "not run"),
    ]  # fmt: skip
    with pytest.raises(LaunchError, match="did not complete"):
        bundle.import_outputs(root, tmp_path / "first")
    for folder in ("out", ".carry/launch"):  # a fresh machine: only the plan and the archive
        shutil.rmtree(root / folder)
    assert bundle.run(root, jobs=2, out=tmp_path / "second", resume=tmp_path / "first") == 0
    assert (root / "out/y").read_text() == "once\n"  # a finished stage is not rerun
    with open_archive(tmp_path / "second") as tar:
        assert {"out/x", "out/certified"} <= set(tar.getnames())
    second = run_record(tmp_path / "second")
    assert second["complete"] is True
    assert [name for name, _ in states(second)] == ["toy:prepare@a", "toy:train@a-y-0", "toy:train@a-x-0", "toy:certify@a"]
    assert second["total_seconds"] >= first["total_seconds"]


def test_resuming_the_archive_of_another_plan_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    write_plan(root, [("toy:prepare@a", "mkdir -p out && touch out/p", ())])
    assert bundle.run(root, jobs=1, out=tmp_path / "first") == 0
    write_plan(root, [("toy:prepare@b", "true", ())])
    with pytest.raises(LaunchError, match="holds a run of another plan"):
        bundle.run(root, jobs=1, out=tmp_path / "second", resume=tmp_path / "first")


def test_archives_with_paths_outside_the_checkout_are_refused(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (parts / "outputs.tar.gz.part00").write_bytes(data.getvalue())
    (tmp_path / "checkout").mkdir()
    with pytest.raises(LaunchError, match="refusing archive member '../escaped'"):
        bundle.import_outputs(tmp_path / "checkout", parts)
    assert not (tmp_path / "escaped").exists()


def test_import_without_an_archive_names_the_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/offline_bundle.py"), "import", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert f"offline_bundle: error: no outputs.tar.gz or outputs.tar.gz.part* files in {tmp_path}" in result.stderr


def test_the_host_s_side_needs_neither_dvc_nor_torch_nor_yaml() -> None:
    """The host runs the plan with the standard library and the carried submitit only."""
    code = (
        "import sys, lipbench.launch.bundle, lipbench.launch.runner, lipbench.launch.plan, lipbench.launch.archive; "
        "print(sorted(m for m in ('dvc', 'torch', 'yaml', 'numpy', 'networkx') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "[]"


def test_the_plan_of_the_real_pipelines_prepares_then_trains_then_evaluates_without_the_report(tmp_path: Path) -> None:
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines")
    shutil.copytree(REPO / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    targets = ["pipelines/paper/dvc.yaml:verify@mnist", "pipelines/paper/dvc.yaml:certify@mnist"]
    plan = bundle.bundle_plan(tmp_path, targets, "abc123")
    methods = yaml.safe_load((REPO / "pipelines/paper/params.yaml").read_text())["models"]  # the paper profile's
    # the train stage fanned out: a part per model, then the stage (it collects them)
    assert [job.kind for job in plan.jobs] == ["validate", "prepare"] + ["train"] * (len(methods) + 1) + [
        "certify", "attack", "verify",
    ]  # fmt: skip
    trains = [job.name.split("@")[1] for job in plan.jobs if job.kind == "train"]
    assert trains == [f"mnist/{method}/seed0" for method in methods] + ["mnist"]
    assert all(
        job.commands[0].startswith("lipbench ") and "--params pipelines/paper/params.yaml" in job.commands[0] for job in plan.jobs
    )
    assert plan.extra["outputs"] == [
        "data/paper/models",
        "data/paper/evaluation",
        "reports/paper/metrics",
        "data/paper/validated.json",
    ]
    whole = DvcStages(tmp_path, force=True)
    assert "report" in [job.kind for job in whole.plan(["dvc.yaml"]).jobs]
    assert "report" not in [job.kind for job in bundle.bundle_plan(tmp_path, ["dvc.yaml"], "abc123").jobs]


TOY = {
    "validate": {"cmd": "mkdir -p data && echo ok > data/validated.json", "outs": ["data/validated.json"]},
    "prepare": {"foreach": ["a"], "do": {"cmd": "mkdir -p data/prepared && echo ${item} > data/prepared/${item}",
                                         "deps": ["data/validated.json"], "outs": ["data/prepared/${item}"]}},
    "train": {"cmd": "mkdir -p metrics && cat data/prepared/a > models/x && echo '{\"accuracy\": 1}' > metrics/x.json",
              "deps": ["data/prepared/a"], "outs": ["models/x"]},
    "report": {"cmd": "cat models/x > report.txt", "deps": ["models/x"], "outs": ["report.txt"]},
}  # fmt: skip


def test_a_host_s_run_imported_here_leaves_dvc_status_clean_but_for_the_report(tmp_path: Path) -> None:
    here = tmp_path / "here"
    here.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=here, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=here, check=True)
    (here / "dvc.yaml").write_text(yaml.safe_dump({"stages": TOY}, sort_keys=False))
    paths = {key: key for key in ("data", "models", "evaluation", "metrics", "reports")}
    (here / "params.yaml").write_text(yaml.safe_dump({"paths": paths}))
    (here / "models").mkdir()
    bundle_plan = bundle.bundle_plan(here, ["dvc.yaml"], "abc123")
    assert [job.name for job in bundle_plan.jobs] == ["validate", "prepare@a", "train"]
    bundle_plan.write(here / ".carry/plan.json")
    host = tmp_path / "host"  # no DVC there: the checkout's files and the plan
    shutil.copytree(here, host, ignore=shutil.ignore_patterns(".dvc", ".git"))
    assert bundle.run(host, jobs=2, out=tmp_path / "results") == 0
    records = bundle.import_outputs(here, tmp_path / "results")
    assert [(record.name, record.state) for record in records] == [
        ("validate", "imported"), ("prepare@a", "succeeded"), ("train", "imported"),
    ]  # fmt: skip
    assert (here / "models/x").read_text() == "a\n" and (here / "metrics/x.json").is_file()
    status = subprocess.run([DVC, "status"], cwd=here, capture_output=True, text=True, check=True).stdout
    assert status.startswith("report:") and "validate" not in status and "train" not in status and "prepare" not in status
