"""The train stage (``lipbench train --dataset D``): every model of the dataset, kept models
reused by fingerprint, parallel workers with one thread each giving the bytes of a
single-model run, stale models dropped, the checkpoint outside DVC's output, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import lipbench.train.stage as stage_module
from lipbench.cli.main import main
from lipbench.profiles import ProfileError, load_profile
from lipbench.runs import Layout, RunKey, run_keys
from lipbench.summaries import TrainSummary
from lipbench.train.stage import run_train_stage, training_fingerprint, training_threads

KEYS = [RunKey("moons", model, seed) for model in ("hkr", "adv") for seed in (0, 1)]


def _edit(params_path: Path, edit) -> None:
    params = yaml.safe_load(params_path.read_text())
    edit(params)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def counted_trainings(monkeypatch) -> list[RunKey]:
    """The keys actually trained (run_training calls in this process)."""
    trained: list[RunKey] = []
    real = stage_module.run_training

    def counting(profile, key, *args, **kwargs):
        trained.append(key)
        return real(profile, key, *args, **kwargs)

    monkeypatch.setattr(stage_module, "run_training", counting)
    return trained


def test_the_stage_trains_every_model_then_reuses_them_and_retrains_only_a_changed_one(tiny_profile, counted_trainings):
    profile = load_profile(tiny_profile)
    layout = Layout.of(profile)
    summaries = run_train_stage(profile, "moons", progress=False)
    assert list(summaries) == KEYS == counted_trainings
    for key in KEYS:
        assert layout.weights(key).is_file() and layout.train_summary(key).is_file() and layout.train_history(key).is_file()
        assert layout.checkpoint(key).is_file() and not layout.checkpoint(key).is_relative_to(layout.models_dataset_dir("moons"))
        assert sorted(path.name for path in layout.model_dir(key).iterdir()) == ["fingerprint.txt", "weights.safetensors"]
        assert (layout.model_dir(key) / "fingerprint.txt").read_text().strip() == training_fingerprint(profile, key)
    weights = {key: layout.weights(key).read_bytes() for key in KEYS}
    records = {key: layout.train_summary(key).read_text() for key in KEYS}

    shutil.rmtree(layout.models_dataset_dir("moons"))  # what DVC does before it reruns the stage
    counted_trainings.clear()
    again = run_train_stage(profile, "moons", progress=False)
    assert counted_trainings == []
    assert {key: layout.weights(key).read_bytes() for key in KEYS} == weights
    assert {key: layout.train_summary(key).read_text() for key in KEYS} == records
    assert {key: summary.test_accuracy for key, summary in again.items()} == {k: s.test_accuracy for k, s in summaries.items()}

    _edit(tiny_profile, lambda params: params["train"]["moons"]["adv"].update(steps=3))
    run_train_stage(load_profile(tiny_profile), "moons", progress=False)
    assert counted_trainings == [RunKey("moons", "adv", 0), RunKey("moons", "adv", 1)]
    assert json.loads(layout.train_summary(RunKey("moons", "adv", 0)).read_text())["method_params"]["steps"] == 3
    assert layout.weights(RunKey("moons", "hkr", 1)).read_bytes() == weights[RunKey("moons", "hkr", 1)]


def test_a_clone_restored_from_dvc_cache_reuses_the_locked_models(tiny_profile, counted_trainings, dvc_locked, monkeypatch):
    """A clone restored from DVC's cache has no kept copies: the stage takes each unchanged
    model from its output as dvc.lock recorded it (weights and fingerprint from the cache,
    summary and history git-tracked), retrains a changed one, and one whose cached weights
    are damaged."""
    monkeypatch.chdir(tiny_profile.parent)  # DVC runs a stage in its wdir; lock paths are relative to it
    profile = load_profile(tiny_profile)
    layout = Layout.of(profile)
    run_train_stage(profile, "moons", progress=False)
    weights = {key: layout.weights(key).read_bytes() for key in KEYS}
    records = {key: layout.train_summary(key).read_text() for key in KEYS}
    manifest = dvc_locked(tiny_profile.parent, "train@moons", layout.models_dataset_dir("moons"))
    damaged = RunKey("moons", "hkr", 1)
    for entry in json.loads(manifest.read_text()):
        if entry["relpath"] == "hkr/seed1/weights.safetensors":
            cached = manifest.parents[1] / entry["md5"][:2] / entry["md5"][2:]
            cached.chmod(0o644)
            cached.write_bytes(b"damaged")

    def restored_clone() -> None:  # DVC removed the output; a fresh clone has no reuse folder
        shutil.rmtree(layout.models_dataset_dir("moons"))
        shutil.rmtree(layout.reuse_dir("train", KEYS[0]).parents[2])

    restored_clone()
    counted_trainings.clear()
    again = run_train_stage(profile, "moons", progress=False)
    assert counted_trainings == [damaged]
    assert {key: layout.weights(key).read_bytes() for key in KEYS} == weights
    assert {key: layout.train_summary(key).read_text() for key in KEYS if key != damaged} == {
        key: records[key] for key in KEYS if key != damaged
    }
    assert (
        again[RunKey("moons", "adv", 0)].timing == TrainSummary.from_json(json.loads(records[RunKey("moons", "adv", 0)])).timing
    )
    for key in KEYS:  # kept again: the next rerun needs no cache
        assert layout.reuse_dir("train", key).joinpath("fingerprint.txt").is_file()

    other_run = RunKey("moons", "adv", 1)  # its git-tracked record describes another run (a run-cache restore)
    record = json.loads(layout.train_summary(other_run).read_text())
    layout.train_summary(other_run).write_text(json.dumps(record | {"method_params": {"epsilon": 0.5, "steps": 2}}))
    restored_clone()
    counted_trainings.clear()
    run_train_stage(profile, "moons", progress=False)
    assert counted_trainings == [damaged, other_run]
    assert layout.weights(other_run).read_bytes() == weights[other_run]

    restored_clone()
    counted_trainings.clear()
    _edit(tiny_profile, lambda params: params["train"]["moons"]["adv"].update(steps=3))
    run_train_stage(load_profile(tiny_profile), "moons", progress=False)
    assert counted_trainings == [damaged, RunKey("moons", "adv", 0), RunKey("moons", "adv", 1)]


def test_a_model_left_out_of_the_profile_loses_its_folders(tiny_profile):
    run_train_stage(load_profile(tiny_profile), "moons", progress=False)
    _edit(tiny_profile, lambda params: params.update(models=["hkr"]))
    profile = load_profile(tiny_profile)
    layout = Layout.of(profile)
    run_train_stage(profile, "moons", progress=False)
    gone = RunKey("moons", "adv", 0)
    for folder in (layout.model_dir(gone), layout.reuse_dir("train", gone), layout.train_history(gone).parent):
        assert not folder.parent.exists(), folder
    assert not layout.train_metrics_dir(gone).parent.exists()
    assert all(layout.weights(key).is_file() for key in run_keys(profile, "moons"))


def test_the_fingerprint_follows_what_decides_the_bytes(tiny_profile):
    profile = load_profile(tiny_profile)
    key = RunKey("moons", "hkr", 0)
    first = training_fingerprint(profile, key)
    assert training_fingerprint(profile, key) == first
    assert training_fingerprint(profile, RunKey("moons", "hkr", 1)) != first  # the seed
    _edit(tiny_profile, lambda params: params["train"]["moons"]["recipe"].update(epochs=4))
    assert training_fingerprint(load_profile(tiny_profile), key) != first
    _edit(tiny_profile, lambda params: params["train"]["moons"]["recipe"].update(epochs=3))
    threads = torch.get_num_threads()
    try:  # on CPU the float rounding depends on torch's threads: so does the fingerprint
        torch.set_num_threads(2)
        two = training_fingerprint(load_profile(tiny_profile), key)
        torch.set_num_threads(1)
        assert training_fingerprint(load_profile(tiny_profile), key) != two
    finally:
        torch.set_num_threads(threads)
    assert training_threads(load_profile(tiny_profile)) is None  # one worker: torch's default threads
    _edit(tiny_profile, lambda params: params["train"].update(workers=2))
    assert training_threads(load_profile(tiny_profile)) == 1


def test_parallel_workers_give_the_bytes_of_a_single_model_run(tiny_profile, tmp_path):
    """With train.workers 2 the stage trains in two spawned processes with one thread each;
    ``lipbench train --model M --seed S`` (what ``lipbench launch`` runs per model) trains with
    the same thread and gives the same bytes, so the stage reuses it."""
    _edit(tiny_profile, lambda params: params["train"].update(workers=2))
    profile = load_profile(tiny_profile)
    layout = Layout.of(profile)
    run_train_stage(profile, "moons", progress=False)
    staged = {key: layout.weights(key).read_bytes() for key in KEYS}
    metadata = json.loads(layout.train_summary(KEYS[0]).read_text())["environment"]
    assert metadata["torch_threads"] == 1
    key = RunKey("moons", "hkr", 1)
    for folder in (layout.reuse_dir("train", key), layout.checkpoint(key).parent):
        shutil.rmtree(folder)
    layout.weights(key).unlink()
    argv = ["train", "--params", str(tiny_profile), "--dataset", "moons", "--model", "hkr", "--seed", "1", "--no-progress"]
    assert main(argv) == 0
    assert layout.weights(key).read_bytes() == staged[key]
    assert (layout.reuse_dir("train", key) / "fingerprint.txt").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "hkr"], "give --model and --seed together"),
        (["--seed", "0"], "give --model and --seed together"),
        (["--out", "x"], "--out apply to one model: add --model M --seed S"),
        (["--metrics", "m", "--device", "cpu"], "--metrics, --device apply to one model"),
    ],
)
def test_cli_refuses_half_a_model_or_one_model_options_for_the_stage(tiny_profile, capsys, argv, message):
    assert main(["train", "--params", str(tiny_profile), "--dataset", "moons", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not Layout.of(load_profile(tiny_profile)).models_dataset_dir("moons").exists()


@pytest.mark.parametrize("workers", [0, True, "2", 1.5])
def test_train_workers_must_be_a_whole_number_of_at_least_one(tiny_profile, workers):
    _edit(tiny_profile, lambda params: params["train"].update(workers=workers))
    with pytest.raises(ProfileError, match=r"params.yaml: train.workers must be a whole number >= 1"):
        run_train_stage(load_profile(tiny_profile), "moons", progress=False)


def test_an_unknown_dataset_is_refused_before_any_training(tiny_profile, counted_trainings):
    with pytest.raises(ProfileError, match="dataset 'digits' is not in this profile's datasets"):
        run_train_stage(load_profile(tiny_profile), "digits", progress=False)
    assert counted_trainings == []
