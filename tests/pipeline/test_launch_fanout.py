"""``lipbench launch`` fans a train stage out: a job per (model, seed) of its dataset (a part,
``lipbench train ... --model M --seed S``) before the stage's own job, which needs them all.
The quick profile's plan, the plan file, the DVC side of a part (never a DVC stage: run
unless its stage will not, never committed), and a toy pipeline whose train command is a
shell script run locally, on a fake Slurm and through the offline bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from test_launch import REPO, _copy_pipelines, dvc_status, fake_slurm, git, sbatch_calls, toy_repository  # noqa: F401

from lipbench.cli.main import main
from lipbench.launch import bundle
from lipbench.launch.launcher import launch, report
from lipbench.launch.plan import Job, LaunchError, Plan
from lipbench.launch.stages import DvcStages, fan_out, train_parts


@pytest.fixture(scope="module")
def quick_plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    """The plan of the quick profile's ``train@moons`` (root dvc.yaml and params.yaml), nothing run yet."""
    root = tmp_path_factory.mktemp("pipelines")
    _copy_pipelines(root)
    return DvcStages(root, force=True).plan(["dvc.yaml:train@moons"])


def test_the_quick_profile_s_train_stage_has_a_part_per_model_before_it(quick_plan: Plan) -> None:
    models = yaml.safe_load((REPO / "params.yaml").read_text())["models"]
    parts = [f"train@moons/{model}/seed0" for model in models]
    assert [job.name for job in quick_plan.jobs] == ["validate", "prepare@moons", *parts, "train@moons"]
    for model, name in zip(models, parts, strict=True):
        part = quick_plan.job(name)
        assert part.commands == (f"lipbench train --params params.yaml --dataset moons --model {model} --seed 0",)
        assert (part.part_of, part.needs, part.outs, part.wdir, part.pipeline, part.kind) == (
            "train@moons", ("prepare@moons",), (), ".", "dvc.yaml", "train",
        )  # fmt: skip
    stage = quick_plan.job("train@moons")
    assert stage.part_of == "" and stage.needs == ("prepare@moons", *parts)
    assert stage.commands == ("lipbench train --params params.yaml --dataset moons",)
    assert stage.outs == ("data/quick/models/moons",)
    assert [[job.name for job in level] for level in quick_plan.levels()] == [
        ["validate"], ["prepare@moons"], parts, ["train@moons"],
    ]  # fmt: skip


def test_a_plan_file_keeps_parts_and_an_older_one_still_reads(quick_plan: Plan) -> None:
    again = Plan.from_json(quick_plan.to_json())
    assert again == quick_plan and again.job("train@moons/hkr/seed0").part_of == "train@moons"
    older = {"name": "train@moons", "commands": ["lipbench train --params params.yaml --dataset moons"]}
    assert Job.from_json(older).part_of == ""
    remaining = quick_plan.without(["validate", "prepare@moons"])  # finished elsewhere: parts stay parts
    assert remaining.job("train@moons/kr/seed0").part_of == "train@moons" and remaining.job("train@moons/kr/seed0").needs == ()


def test_a_part_runs_is_never_committed_and_never_looked_up_as_a_stage(
    tmp_path: Path, quick_plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    _copy_pipelines(tmp_path)
    looked_up: list[str] = []
    lookup = DvcStages._stage
    monkeypatch.setattr(DvcStages, "_stage", lambda self, name: looked_up.append(name) or lookup(self, name))
    part = quick_plan.job("train@moons/hkr/seed0")
    assert DvcStages(tmp_path, force=True).settle(part) == "run"
    stages = DvcStages(tmp_path)
    assert stages.settle(part) == "run"  # its stage changed and the run-cache is empty
    assert stages.settle(quick_plan.job("train@moons/kr/seed0")) == "run"
    stages.commit(part)
    assert looked_up == ["train@moons"]  # the parts' stage, once, for its state; never a part
    assert not (tmp_path / "dvc.lock").exists() and not (tmp_path / "data").exists()


def test_only_a_train_command_with_params_and_dataset_fans_out(tmp_path: Path) -> None:
    (tmp_path / "profile.yaml").write_text((REPO / "params.yaml").read_text())
    fanned = Job("train@moons", ("lipbench train --params=profile.yaml --dataset moons --no-progress",), needs=("prepare@moons",))
    assert [part.commands[0] for part in train_parts(fanned, tmp_path)][:1] == [
        "lipbench train --params=profile.yaml --dataset moons --no-progress --model standard --seed 0"
    ]
    for command in (
        "lipbench train --dataset moons",  # no --params
        "lipbench train --params profile.yaml",  # no --dataset
        "lipbench train --params profile.yaml --dataset moons --model hkr --seed 0",  # one model already
        "python train.py --params profile.yaml --dataset 'moons",  # the shell cannot split it
    ):
        job = Job("train@moons", (command,), needs=("prepare@moons",))
        assert train_parts(job, tmp_path) == () and fan_out([job], tmp_path) == (job,), command
    two_lines = Job("train@moons", ("lipbench train --params profile.yaml --dataset moons", "true"))
    certify = Job("certify@moons", ("lipbench certify --params profile.yaml --dataset moons",))
    assert train_parts(two_lines, tmp_path) == () and train_parts(certify, tmp_path) == ()
    with pytest.raises(LaunchError, match="cannot list the models of train@moons: params file .*none.yaml does not exist"):
        train_parts(Job("train@moons", ("lipbench train --params none.yaml --dataset moons",)), tmp_path)


#: A stand-in for ``lipbench train``: with --model (a part) it keeps that model, meeting the
#: other part (they run side by side); without (the stage) it copies every kept model.
TRAIN_SH = """
model=""; dataset=""
while [ $# -gt 0 ]; do case "$1" in --model) model=$2;; --dataset) dataset=$2;; esac; shift; done
if [ -n "$model" ]; then
  echo "part $model" >> calls.log
  other=$([ "$model" = x ] && echo y || echo x)
  touch started-$model; for i in $(seq 200); do [ -e started-$other ] && break; sleep 0.1; done; ls started-$other || exit 1
  mkdir -p evaluation/kept && echo "$dataset $model" > evaluation/kept/$model
else
  echo stage >> calls.log
  mkdir -p models/$dataset && for m in x y; do cp evaluation/kept/$m models/$dataset/$m || exit 1; done
fi
"""
STAGES = {
    "prepare": {"foreach": ["a"], "do": {"cmd": "mkdir -p data/prepared && echo ${item} > data/prepared/${item}",
                                         "outs": ["data/prepared/${item}"]}},
    "train": {"foreach": ["a"], "do": {"cmd": "sh train.sh --params params.yaml --dataset ${item}",
                                       "deps": ["data/prepared/${item}", "train.sh"], "outs": ["models/${item}"]}},
    "certify": {"foreach": ["a"], "do": {"cmd": "mkdir -p metrics && ls models/${item} > metrics/${item}",
                                         "deps": ["models/${item}"], "outs": ["metrics/${item}"]}},
}  # fmt: skip
PROFILE = {
    "profile": "toy", "datasets": ["a"], "models": ["x", "y"], "seeds": [0], "prepare": {}, "train": {},
    "paths": {key: key for key in ("data", "models", "evaluation", "metrics", "reports")},
}  # fmt: skip
PARTS = ["train@a/x/seed0", "train@a/y/seed0"]


def toy(root: Path) -> Path:
    """A git + DVC repository whose train stage fans out into models x and y (``TRAIN_SH``)."""
    toy_repository(root, STAGES)
    (root / "train.sh").write_text(TRAIN_SH)
    (root / "params.yaml").write_text(yaml.safe_dump(PROFILE))
    (root / ".gitignore").write_text("/.launch/\nstarted-*\ncalls.log\n/evaluation/\n/.carry/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "fanned out")
    return root


def forget(root: Path) -> None:
    """Delete the trained models, the kept ones and the record of calls: only DVC's cache has them."""
    for folder in ("models", "evaluation"):
        shutil.rmtree(root / folder)
    (root / "calls.log").unlink()


def test_dry_lists_the_parts_in_their_level(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(toy(tmp_path / "toy"))
    assert main(["launch", "--dry"]) == 0
    out = capsys.readouterr().out
    assert "level 1: train@a/x/seed0 (after prepare@a)\nlevel 1: train@a/y/seed0 (after prepare@a)\n" in out
    assert "level 2: train@a (after prepare@a, its 2 parts)\n" in out and "level 3: certify@a (after train@a)" in out
    assert "5 jobs to run (2 of them parts of train stages); 0 stages up to date" in out


def test_local_parts_run_side_by_side_then_the_stage_and_a_clone_with_the_cache_reruns_nothing(tmp_path: Path) -> None:
    root = toy(tmp_path / "toy")
    result = launch(root, [], jobs=2)
    assert result.ok, report(result)
    assert [(record.name, record.state) for record in result.records] == [
        ("prepare@a", "succeeded"), *((part, "succeeded") for part in PARTS), ("train@a", "succeeded"),
        ("certify@a", "succeeded"),
    ]  # fmt: skip
    assert sorted((root / "calls.log").read_text().splitlines()) == ["part x", "part y", "stage"]
    assert sorted(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == ["certify@a", "prepare@a", "train@a"]
    assert "Data and pipelines are up to date." in dvc_status(root)
    forget(root)  # the run-cache restores the stage: its parts are skipped, nothing is trained
    again = launch(root, [], jobs=2)
    assert [(record.name, record.state) for record in again.records] == [
        *((part, "skipped") for part in PARTS), ("train@a", "restored"), ("certify@a", "up to date"),
    ]  # fmt: skip
    assert not (root / "calls.log").exists() and (root / "models/a/y").read_text() == "a y\n"
    (root / "data/prepared/a").unlink()  # prepared again, the same: the stage is up to date, its parts skipped
    third = launch(root, [], jobs=2)
    assert [(record.name, record.state) for record in third.records] == [
        ("prepare@a", "succeeded"), *((part, "skipped") for part in PARTS), ("train@a", "up to date"),
        ("certify@a", "up to date"),
    ]  # fmt: skip
    assert not (root / "calls.log").exists() and "Data and pipelines are up to date." in dvc_status(root)


def test_slurm_parts_are_jobs_the_stage_runs_after(tmp_path: Path, fake_slurm: Path, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv("FAKE_SLURM_RUN", "1")
    root = toy(tmp_path / "toy")
    result = launch(root, [], executor="slurm", poll_s=0.2)
    assert result.ok, report(result)
    ids = {call["script"].split("--job-name=")[1].split("\n")[0]: call["id"] for call in sbatch_calls(fake_slurm)}
    assert sorted(ids) == sorted(["prepare@a", *PARTS, "train@a", "certify@a"])
    script = {call["id"]: call["script"] for call in sbatch_calls(fake_slurm)}
    for part in PARTS:
        assert f"#SBATCH --dependency=afterok:{ids['prepare@a']}\n" in script[ids[part]]
    assert f"#SBATCH --dependency=afterok:{ids['prepare@a']}:{ids[PARTS[0]]}:{ids[PARTS[1]]}\n" in script[ids["train@a"]]
    assert "Data and pipelines are up to date." in dvc_status(root)
    forget(root)  # settled before submission: nothing is submitted
    again = launch(root, [], executor="slurm", poll_s=0.2)
    assert [(record.name, record.state) for record in again.records] == [
        *((part, "skipped") for part in PARTS), ("train@a", "restored"), ("certify@a", "up to date"),
    ]  # fmt: skip
    assert len(sbatch_calls(fake_slurm)) == len(ids) and not (root / "calls.log").exists()


def test_the_offline_bundle_runs_the_parts_and_imports_them_with_their_stage(tmp_path: Path) -> None:
    here = toy(tmp_path / "here")
    plan = bundle.bundle_plan(here, ["dvc.yaml"], "abc123")
    assert [job.name for job in plan.jobs] == ["prepare@a", *PARTS, "train@a", "certify@a"]
    plan.write(here / ".carry/plan.json")
    host = tmp_path / "host"  # no DVC there: the checkout's files and the plan
    shutil.copytree(here, host, ignore=shutil.ignore_patterns(".dvc", ".git"))
    assert bundle.run(host, jobs=2, out=tmp_path / "results") == 0
    records = bundle.import_outputs(here, tmp_path / "results")
    assert [(record.name, record.state) for record in records] == [
        ("prepare@a", "succeeded"), *((part, "imported") for part in PARTS), ("train@a", "imported"),
        ("certify@a", "imported"),
    ]  # fmt: skip
    assert (here / "models/a/x").read_text() == "a x\n" and not (here / "calls.log").exists()
    assert "Data and pipelines are up to date." in dvc_status(here)
