"""Every path dvc.yaml declares, for every profile, is the path lipbench.runs.Layout gives
(the stages, the evaluation and the report derive their paths from the layout)."""

from __future__ import annotations

import itertools
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from dvc.repo import Repo

from lipbench.data.base import MANIFEST_NAME
from lipbench.profiles import load_profile
from lipbench.report import inputs
from lipbench.runs import EVALUATION_STAGES, MODEL_STAGES, Layout, RunKey, run_keys

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stages() -> list:
    return list(Repo(str(REPO)).index.stages)


def _relative(path: str) -> str:
    return os.path.relpath(path, REPO)


def _options(command: str) -> dict[str, str]:
    words = shlex.split(command)
    return {word[2:]: value for word, value in itertools.pairwise(words) if word.startswith("--")}


def _profile_stages(stages: list) -> Iterator[tuple[Layout, object, dict[str, str]]]:
    for stage in stages:
        profile = load_profile(Path(stage.dvcfile.path).parent / "params.yaml")
        assert Path(stage.wdir) == REPO, stage.name
        yield Layout.of(profile), stage, _options(stage.cmd)


def test_every_profile_has_its_stages(stages):
    files = {_relative(stage.dvcfile.path) for stage in stages}
    assert files == {"dvc.yaml", "pipelines/mnist/dvc.yaml", "pipelines/paper/dvc.yaml"}


def test_declared_outputs_and_commands_are_the_layout_paths(stages):
    checked = set()
    for layout, stage, options in _profile_stages(stages):
        name = stage.name.partition("@")[0]
        outs = {_relative(out.fs_path) for out in stage.outs}
        deps = {_relative(dep.fs_path) for dep in stage.deps}
        dataset = options.get("dataset")
        if name == "validate":
            assert outs == {str(layout.validated())} and options["out"] == str(layout.validated())
        elif name == "prepare":
            assert outs == {str(layout.prepared(dataset))} and str(layout.validated()) in deps
        elif name == "train":
            assert outs == {str(layout.models_dataset_dir(dataset))}, stage.name  # records and histories undeclared
            for key in run_keys(load_profile(options["params"]), dataset):
                assert layout.weights(key).is_relative_to(layout.models_dataset_dir(dataset))
                assert not layout.checkpoint(key).is_relative_to(layout.models_dataset_dir(dataset))
                assert not layout.reuse_dir("train", key).is_relative_to(layout.models_dataset_dir(dataset))
                assert layout.train_history(key).is_relative_to(layout.train_history_dataset_dir(dataset))
                assert layout.train_summary(key).parent != layout.train_history(key).parent  # DVC plots a whole folder
            assert set(options) == {"params", "dataset"} and str(layout.prepared(dataset)) in deps
        elif name in EVALUATION_STAGES:
            assert outs == {str(layout.stage_dataset_dir(name, dataset))}  # the git-tracked record is undeclared
            upstream = EVALUATION_STAGES[: EVALUATION_STAGES.index(name)]
            assert {str(layout.stage_dataset_dir(u, dataset)) for u in upstream} <= deps, stage.name
            assert str(layout.model_dir(RunKey(dataset, "x", 0)).parent.parent) in deps  # every model of the dataset
        elif name == "explain":
            assert outs == {str(layout.stage_dataset_dir(name, dataset))}  # the git-tracked record is undeclared
            assert {str(layout.stage_dataset_dir(u, dataset)) for u in ("certify", "attack")} <= deps, stage.name
            assert str(layout.model_dir(RunKey(dataset, "x", 0)).parent.parent) in deps
        else:
            assert name == "report"
            assert all(Path(out).is_relative_to(layout.reports) for out in outs)
            assert {_relative(out.fs_path) for out in stage.outs if out.metric} == {str(layout.scores)}
            assert {str(layout.stage_dataset_dir(s, "x").parent) for s in MODEL_STAGES} <= deps
            # the records the stages write undeclared reach the report through this dependency
            assert str(layout.stage_metrics("certify", "x").parent.parent) in deps
        checked.add(name)
    assert checked == {"validate", "prepare", "train", "certify", "attack", "verify", "explain", "report"}


def test_every_stage_but_the_report_can_be_restored_from_the_run_cache(stages):
    """DVC's run-cache skips stages with persistent outputs and stages with uncached outputs
    other than metrics and plots (dvc/stage/__init__.py, Stage.run); checkpoints are not
    outputs; only the scores are DVC metrics."""
    for stage in stages:
        if stage.name != "report":
            assert stage.cmd and stage.deps and stage.outs, stage.name
            assert not any(out.persist for out in stage.outs), stage.name
            assert all(out.use_cache or out.is_metric or out.is_plot for out in stage.outs), stage.name
        for out in stage.outs:
            assert not (out.persist and out.use_cache), f"{stage.name}: {out} is cached and persistent"
            assert not out.def_path.endswith("checkpoint.pt"), stage.name
            assert not out.metric or out.def_path.endswith("scores.json"), f"{stage.name}: {out} is a DVC metric"


def test_the_training_histories_are_the_pipelines_plot_folder(stages):
    """dvc.yaml's top-level plots name the folder every history lies in, and only histories."""
    for dvcfile in {stage.dvcfile for stage in stages}:
        profile = load_profile(Path(dvcfile.path).parent / "params.yaml")
        layout = Layout.of(profile)
        plots = {_relative(os.path.normpath(Path(dvcfile.path).parent / path)) for plot in dvcfile.plots for path in plot}
        folder = layout.train_history_dataset_dir("x").parent
        assert plots == {str(layout.reports / "plots"), str(folder)}, plots
        for key in run_keys(profile):
            assert layout.train_history(key).is_relative_to(folder) and not layout.train_summary(key).is_relative_to(folder)


def test_the_report_reads_the_prepared_manifest_under_its_real_name():
    assert inputs._MANIFEST == MANIFEST_NAME
