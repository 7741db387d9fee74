"""``lipbench launch`` on a toy DVC repository (shell stages, seconds): the local executor runs
side by side what is ready, commits like ``dvc repro``, runs nothing the second time, stops
the dependants of a failed stage; bad input is one clear error before any work; the Slurm
executor's scripts carry the resources and ``afterok`` dependencies (a fake ``sbatch``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lipbench.cli.main import main
from lipbench.launch.launcher import launch, report
from lipbench.launch.plan import LaunchError
from lipbench.launch.slurm import slurm_options

DVC = str(Path(sys.executable).parent / "dvc")
REPO = Path(__file__).resolve().parents[2]


def meet(mine: str, other: str, then: str) -> str:
    """A command that touches ``mine``, waits (up to 20 s) for ``other``, then runs ``then``
    (it fails when ``other`` never came)."""
    return f"touch {mine}; for i in $(seq 200); do [ -e {other} ] && break; sleep 0.1; done; ls {other} && {then}"


#: b and c each wait for the other to have started: run one after the other, they could not
#: both finish; d needs both.
TOY = {
    "a": {"cmd": "echo a > a.txt", "outs": ["a.txt"]},
    "b": {"cmd": meet("started-b", "started-c", "cat a.txt > b.txt"), "deps": ["a.txt"], "outs": ["b.txt"]},
    "c": {"cmd": meet("started-c", "started-b", "cat a.txt > c.txt"), "deps": ["a.txt"], "outs": ["c.txt"]},
    "d": {"cmd": "cat b.txt c.txt > d.txt", "deps": ["b.txt", "c.txt"], "outs": ["d.txt"]},
}


def git(root: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, cwd=root, check=True, capture_output=True, text=True).stdout


def toy_repository(root: Path, stages: dict | None = None) -> Path:
    """A git + DVC repository with the toy pipeline, committed."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    subprocess.run([DVC, "init", "-q"], cwd=root, check=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages or TOY}, sort_keys=False))
    (root / ".gitignore").write_text("/.launch/\nstarted-*\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "toy")
    return root


def dvc_status(root: Path) -> str:
    return subprocess.run([DVC, "status"], cwd=root, capture_output=True, text=True, check=True).stdout


def test_local_jobs_run_side_by_side_are_committed_as_dvc_repro_would_and_run_once(tmp_path: Path) -> None:
    root = toy_repository(tmp_path / "launch")
    reference = tmp_path / "repro"
    shutil.copytree(root, reference)
    result = launch(root, [], executor="local", jobs=2)
    assert result.ok, report(result)
    assert [(record.name, record.state, record.exit_status) for record in result.records] == [
        ("a", "succeeded", 0), ("b", "succeeded", 0), ("c", "succeeded", 0), ("d", "succeeded", 0),
    ]  # fmt: skip
    assert [[job.name for job in level] for level in result.plan.levels()] == [["a"], ["b", "c"], ["d"]]
    recorded = json.loads((result.folder / "launch.json").read_text())["records"]
    assert recorded[1]["commands"] == [TOY["b"]["cmd"]] and recorded[1]["seconds"] >= 0
    assert "started-c" in Path(recorded[1]["log"]).read_text()  # the command's output is its log
    assert "Data and pipelines are up to date." in dvc_status(root)
    for marker in ("started-b", "started-c"):  # one after the other, b and c find each other's marker
        (reference / marker).touch()
    subprocess.run([DVC, "repro", "-q"], cwd=reference, check=True, capture_output=True)
    # What dvc repro writes (stages in the order they were first committed: b and c finish in any order).
    assert yaml.safe_load((root / "dvc.lock").read_text()) == yaml.safe_load((reference / "dvc.lock").read_text())
    assert git(root, "status", "--porcelain") == git(reference, "status", "--porcelain")  # same files staged
    again = launch(root, [], executor="local", jobs=2)
    assert again.plan.jobs == () and again.records == [] and sorted(again.plan.up_to_date) == ["a", "b", "c", "d"]
    assert "nothing to run: 4 stages up to date" in report(again)


def test_a_failed_stage_stops_its_dependants_is_reported_and_not_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stages = {name: dict(stage) for name, stage in TOY.items()}
    stages["b"]["cmd"] = "cat a.txt > b.txt"
    stages["c"]["cmd"] = "echo diverged at epoch 3 >&2; exit 3"
    root = toy_repository(tmp_path / "toy", stages)
    monkeypatch.chdir(root)
    assert main(["launch", "--jobs", "2"]) == 1
    out = capsys.readouterr().out
    assert "lipbench launch: c failed (exit status 3); the end of its log" in out
    assert "diverged at epoch 3" in out
    assert "not run     d" in out and "needs c (failed)" in out
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert sorted(lock) == ["a", "b"]  # nothing committed for c, nor for d, which did not run
    status = dvc_status(root)
    assert "c:" in status and "d:" in status and "b:" not in status
    stages["c"]["cmd"] = "cat a.txt > c.txt"  # fixed: rerunning runs what is missing only
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    fixed = launch(root, [], jobs=2)
    assert [(record.name, record.state) for record in fixed.records] == [("c", "succeeded"), ("d", "succeeded")]
    assert "Data and pipelines are up to date." in dvc_status(root)


def test_a_deleted_output_comes_back_from_the_run_cache_and_its_dependants_stay_up_to_date(tmp_path: Path) -> None:
    root = toy_repository(tmp_path / "toy")
    assert launch(root, ["dvc.yaml:d"], jobs=2).ok
    (root / "b.txt").unlink()
    (root / "started-b").unlink()  # the command would wait for it in vain: it must not run
    result = launch(root, ["d"], jobs=1)
    assert [(record.name, record.state) for record in result.records] == [("b", "restored"), ("d", "up to date")]
    assert (root / "b.txt").read_text() == "a\n"
    assert "Data and pipelines are up to date." in dvc_status(root)


def test_dry_lists_the_jobs_by_level_and_runs_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    root = toy_repository(tmp_path / "toy")
    monkeypatch.chdir(root)
    assert main(["launch", "d", "--dry"]) == 0
    out = capsys.readouterr().out
    assert "level 1: b (after a)" in out and "level 2: d (after b, c)" in out and "4 jobs to run" in out
    assert not (root / "a.txt").exists() and not (root / ".launch").exists()


@pytest.mark.parametrize("visible", [None, "1,3"])
def test_local_jobs_see_this_process_s_gpus_and_share_the_cores(tmp_path: Path, monkeypatch, visible) -> None:
    """submitit's local executor sets CUDA_VISIBLE_DEVICES="" (no GPU) for a job without GPUs:
    the jobs get this process's value back, and pick a GPU each through lipbench's lock files."""
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    command = "(printenv CUDA_VISIBLE_DEVICES || echo unset) > env.txt && printenv OMP_NUM_THREADS >> env.txt"
    root = toy_repository(tmp_path / "toy", {"env": {"cmd": command, "outs": ["env.txt"]}})
    assert launch(root, [], jobs=2).ok
    assert (root / "env.txt").read_text().splitlines() == [visible or "unset", str(max(1, (os.cpu_count() or 1) // 2))]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["dvc.yaml:nope"], "unknown target 'dvc.yaml:nope'"),
        (["pipelines/none/dvc.yaml"], "unknown target 'pipelines/none/dvc.yaml'"),
        (["--slurm-partition", "gpu"], "--slurm-partition is a Slurm option; add --executor slurm or drop --slurm-partition"),
        (["--time", "60"], "--time is a Slurm option; add --executor slurm"),
        (["--executor", "slurm", "--jobs", "2"], "Slurm schedules its jobs itself: drop --jobs"),
        (["--executor", "slurm", "--time", "soon"], "--time must be minutes (240) or Slurm's [days-]hours:minutes:seconds"),
        (["--jobs", "0"], "--jobs must be at least 1, got 0"),
    ],
)
def test_bad_input_is_one_error_naming_it_before_any_work(tmp_path: Path, monkeypatch, capsys, arguments, message) -> None:
    root = toy_repository(tmp_path / "toy")
    monkeypatch.chdir(root)
    assert main(["launch", *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not (root / "a.txt").exists() and not (root / ".launch").exists() and not (root / "dvc.lock").exists()


def test_another_dvc_process_holding_the_lock_is_one_error(tmp_path: Path, monkeypatch, capsys) -> None:
    root = toy_repository(tmp_path / "toy")
    hold = "from dvc.repo import Repo; import time; Repo('.').lock.lock(); print('locked', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", hold], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.chdir(root)
        assert main(["launch"]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert "another DVC process holds the lock of" in capsys.readouterr().err
    assert not (root / "a.txt").exists()


def test_the_launch_section_is_checked_key_by_key(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=r"params.yaml: unknown key launch.gpus; accepted keys: partition, gpus_per_job, "):
        slurm_options({"gpus": 2}, {})
    with pytest.raises(LaunchError, match=r"launch.mem_gb must be a positive number of GB, got 'lots'"):
        slurm_options({"mem_gb": "lots"}, {})
    options = slurm_options({"partition": "gpu", "time": "1-00:00:00", "gpus_per_job": 2}, {"time": "90", "partition": None})
    assert (options.partition, options.time, options.gpus_per_job) == ("gpu", 90, 2)  # an option replaces the file's value
    root = toy_repository(tmp_path / "toy")
    (root / "params.yaml").write_text(yaml.safe_dump({"launch": {"partition": "gpu", "gpu_per_job": 1}}))
    with pytest.raises(LaunchError, match="unknown key launch.gpu_per_job"):
        launch(root, [], executor="slurm")
    assert not (root / "a.txt").exists()


#: A fake Slurm: sbatch records its call and the script, and (FAKE_SLURM_RUN=1) runs the job in
#: the background once its afterok dependencies completed (cancelled when one failed).
FAKE_SBATCH = """
import json, os, subprocess, sys
from pathlib import Path
state = Path(os.environ["FAKE_SLURM_DIR"])
state.mkdir(exist_ok=True)
counter = state / "counter"
number = int(counter.read_text()) + 1 if counter.exists() else 1001
counter.write_text(str(number))
script = state / f"{number}.sh"
script.write_text(Path(sys.argv[-1]).read_text())
with open(state / "calls.jsonl", "a") as calls:
    calls.write(json.dumps({"id": number, "args": sys.argv[1:], "script": script.read_text()}) + "\\n")
(state / f"{number}.state").write_text("PENDING")
if os.environ.get("FAKE_SLURM_RUN"):
    job = [sys.executable, str(Path(__file__).parent / "fake_job"), str(number)]
    subprocess.Popen(job, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"Submitted batch job {number}")
"""
FAKE_JOB = """
import os, re, subprocess, sys, time
from pathlib import Path
state, number = Path(os.environ["FAKE_SLURM_DIR"]), sys.argv[1]
text = (state / f"{number}.sh").read_text()
found = re.search(r"^#SBATCH --dependency=afterok:(\\S+)$", text, re.M)
needs = found.group(1).split(":") if found else []
while True:
    states = [(state / f"{need}.state").read_text() for need in needs]
    if any(s in ("FAILED", "CANCELLED") for s in states):
        (state / f"{number}.state").write_text("CANCELLED")
        sys.exit(0)
    if all(s == "COMPLETED" for s in states):
        break
    time.sleep(0.1)
(state / f"{number}.state").write_text("RUNNING")
slurm = {"SLURM_JOB_ID": number, "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0",
         "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "node1"}
code = subprocess.call(["bash", str(state / f"{number}.sh")], env=os.environ | slurm)
(state / f"{number}.state").write_text("COMPLETED" if code == 0 else "FAILED")
"""
FAKE_SRUN = """
import os, subprocess, sys
from pathlib import Path
args, output = sys.argv[1:], None
while args and args[0].startswith("--"):
    option = args.pop(0)
    if option in ("--output", "--error"):
        value = args.pop(0)
        output = value if option == "--output" else output
log = Path(output.replace("%j", os.environ["SLURM_JOB_ID"]).replace("%t", "0"))
log.parent.mkdir(parents=True, exist_ok=True)
with open(log, "a") as handle:
    sys.exit(subprocess.call(args, stdout=handle, stderr=subprocess.STDOUT))
"""
FAKE_SACCT = """
import os, sys
from pathlib import Path
state = Path(os.environ["FAKE_SLURM_DIR"])
print("JobID|State|NodeList")
for index, word in enumerate(sys.argv):
    if word == "-j":
        number = sys.argv[index + 1]
        path = state / f"{number}.state"
        print(f"{number}|{path.read_text() if path.exists() else 'PENDING'}|node1")
"""


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """sbatch, srun and sacct on PATH; returns the folder holding their records."""
    folder = tmp_path / "fake-slurm"
    folder.mkdir()
    for name, source in {"sbatch": FAKE_SBATCH, "fake_job": FAKE_JOB, "srun": FAKE_SRUN, "sacct": FAKE_SACCT}.items():
        (folder / name).write_text(f"#!{sys.executable}\n{source}")
        (folder / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(folder / "state"))
    return folder / "state"


def sbatch_calls(state: Path) -> list[dict]:
    return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]


def test_slurm_runs_each_stage_after_the_jobs_it_needs_and_cancels_the_dependants_of_a_failure(
    tmp_path: Path, fake_slurm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SLURM_RUN", "1")
    stages = {name: dict(stage) for name, stage in TOY.items()}
    stages["b"]["cmd"] = "cat a.txt > b.txt"
    stages["c"]["cmd"] = "echo out of memory >&2; exit 137"
    root = toy_repository(tmp_path / "toy", stages)
    result = launch(root, [], executor="slurm", slurm={"partition": "debug", "time": "0:10:00"}, poll_s=0.2)
    assert [(record.name, record.state) for record in result.records] == [
        ("a", "succeeded"), ("b", "succeeded"), ("c", "failed"), ("d", "not run"),
    ]  # fmt: skip
    calls = {call["script"].split("--job-name=")[1].split("\n")[0]: call for call in sbatch_calls(fake_slurm)}
    ids = {name: call["id"] for name, call in calls.items()}
    assert "#SBATCH --dependency" not in calls["a"]["script"]
    assert f"#SBATCH --dependency=afterok:{ids['a']}\n" in calls["b"]["script"]
    assert f"#SBATCH --dependency=afterok:{ids['b']}:{ids['c']}\n" in calls["d"]["script"]
    assert all(
        "#SBATCH --partition=debug\n" in call["script"] and "#SBATCH --time=10\n" in call["script"] for call in calls.values()
    )
    for _ in range(100):  # the fake scheduler notices c's failure within a moment
        if (fake_slurm / f"{ids['d']}.state").read_text() != "PENDING":
            break
        time.sleep(0.1)
    assert (fake_slurm / f"{ids['d']}.state").read_text() == "CANCELLED"
    assert "out of memory" in report(result) and "c failed (exit status 137)" in report(result)
    assert sorted(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == ["a", "b"]


def _copy_pipelines(destination: Path) -> None:
    """The pipelines (dvc.yaml and params of every profile) in a git + DVC folder of their own."""
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy2(REPO / name, destination / name)
    shutil.copytree(REPO / "pipelines", destination / "pipelines")
    shutil.copytree(REPO / ".dvc", destination / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    git(destination, "init", "-q")


def test_the_paper_grid_s_sbatch_scripts_carry_the_resources_and_the_dependency_order(tmp_path: Path, fake_slurm: Path) -> None:
    from lipbench.launch.launcher import pipeline_options
    from lipbench.launch.slurm import submit_plan
    from lipbench.launch.stages import DvcStages

    _copy_pipelines(tmp_path)
    params = tmp_path / "pipelines/paper/params.yaml"
    section = {"partition": "gpu", "gpus_per_job": 1, "cpus_per_job": 8, "mem_gb": 32, "time": "12:00:00",
               "sbatch": {"mail-type": "END"}}  # fmt: skip
    params.write_text(params.read_text() + yaml.safe_dump({"launch": section}))
    plan = DvcStages(tmp_path, force=True).plan(["pipelines/paper/dvc.yaml"])
    options = pipeline_options(tmp_path, plan, {"time": "2-00:00:00", "partition": None})
    submitted = submit_plan(plan, tmp_path, tmp_path / "launch", options, {})
    calls = {call["id"]: call["script"] for call in sbatch_calls(fake_slurm)}
    profile = yaml.safe_load(params.read_text())
    datasets, models = len(profile["datasets"]), len(profile["models"]) * len(profile["seeds"])
    # validate, a prepare per dataset, a train part per (dataset, model, seed), then a train, 3 evaluations and
    # explain per dataset, report
    assert len(calls) == len(plan) == 1 + datasets + datasets * models + datasets * 5 + 1
    assert datasets == 5 and models >= 19
    for job in plan.jobs:
        script = calls[int(submitted[job.name][0].job_id)]
        for line in ("--partition=gpu", "--time=2880", "--cpus-per-task=8", "--mem=32768M", "--mail-type=END",
                     "--kill-on-invalid-dep=yes", f"--job-name={job.name.split(':')[1]}"):  # fmt: skip
            assert f"#SBATCH {line}\n" in script, (job.name, line)
        assert ("#SBATCH --gpus-per-node=1\n" in script) == (job.kind in ("train", "certify", "attack", "verify", "explain"))
        needs = sorted(int(submitted[need][0].job_id) for need in job.needs)
        dependency = [line for line in script.splitlines() if line.startswith("#SBATCH --dependency=")]
        assert dependency == ([f"#SBATCH --dependency=afterok:{':'.join(map(str, needs))}"] if needs else [])
        assert all(need < int(submitted[job.name][0].job_id) for need in needs)  # what a job needs is submitted first
    part = plan.job("pipelines/paper/dvc.yaml:train@cifar10/hkr/seed0")
    assert (part.needs, part.part_of, part.outs) == (
        ("pipelines/paper/dvc.yaml:prepare@cifar10",), "pipelines/paper/dvc.yaml:train@cifar10", (),
    )  # fmt: skip
    assert part.commands == ("lipbench train --params pipelines/paper/params.yaml --dataset cifar10 --model hkr --seed 0",)
    models = profile["models"]  # the paper profile's, in its order
    assert plan.job("pipelines/paper/dvc.yaml:train@cifar10").needs == (
        "pipelines/paper/dvc.yaml:prepare@cifar10",
        *(f"pipelines/paper/dvc.yaml:train@cifar10/{model}/seed0" for model in models),
    )
    assert plan.job("pipelines/paper/dvc.yaml:certify@cifar10").needs == (
        "pipelines/paper/dvc.yaml:prepare@cifar10",
        "pipelines/paper/dvc.yaml:train@cifar10",
    )
