"""Training: determinism, resume after a kill, NaN guard, outputs and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lipbench.cli.main import main
from lipbench.methods import get_method
from lipbench.nn import export
from lipbench.profiles import ProfileError, load_profile
from lipbench.runs import RunKey
from lipbench.train import (
    ModelMetadata,
    TrainingDivergedError,
    config_from_profile,
    load_weights,
    run_training,
    save_weights,
)

NONDETERMINISTIC = ("timing", "peak_memory_mb", "environment")


def same_weights(first: Path, second: Path) -> bool:
    """Equal tensors and metadata."""
    a, b = load_file(first), load_file(second)
    with safe_open(str(first), framework="pt") as one, safe_open(str(second), framework="pt") as two:
        same_metadata = one.metadata() == two.metadata()
    return same_metadata and a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def deterministic_part(metrics_dir: Path) -> dict:
    metrics = json.loads((metrics_dir / "metrics.json").read_text())
    return {key: value for key, value in metrics.items() if key not in NONDETERMINISTIC}


def test_same_seed_gives_identical_metrics_and_weights_and_another_seed_differs(tiny_profile):
    profile = load_profile(tiny_profile)
    root = tiny_profile.parent
    for run in ("a", "b"):
        run_training(profile, RunKey("moons", "adv", 0), root / run, root / f"{run}-metrics", progress=False)
    run_training(profile, RunKey("moons", "adv", 1), root / "c", root / "c-metrics", progress=False)
    assert deterministic_part(root / "a-metrics") == deterministic_part(root / "b-metrics")
    assert (root / "a-metrics/history.json").read_bytes() == (root / "b-metrics/history.json").read_bytes()
    # Byte for byte (DVC hashes bytes: a retrained identical model is no new output).
    assert (root / "a/weights.safetensors").read_bytes() == (root / "b/weights.safetensors").read_bytes()
    assert not same_weights(root / "a/weights.safetensors", root / "c/weights.safetensors")
    metrics = json.loads((root / "a-metrics/metrics.json").read_text())
    assert set(metrics["environment"]) >= {"versions", "device", "git_commit", "seed"}
    assert len(metrics["timing"]["seconds_per_epoch"]) == 3 and metrics["parameter_count"] > 0
    assert metrics["peak_memory_mb"]["process_rss"] > 0


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_with_the_uninterrupted_weights(tmp_path, prepared_moons, make_profile):
    (tmp_path / "data").symlink_to(prepared_moons)
    params = make_profile(tmp_path, epochs=60, batch_size=300)
    command = [
        sys.executable,
        "-m",
        "lipbench.cli.main",
        "train",
        "--params",
        str(params),
        "--dataset",
        "moons",
        "--model",
        "hkr",
        "--seed",
        "0",
        "--no-progress",
    ]
    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, "--out", str(killed), "--metrics", str(tmp_path / "killed-metrics")])
    checkpoint = killed / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists() and torch.load(checkpoint, weights_only=True)["epoch"] >= 5:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    interrupted_at = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 5 <= interrupted_at < 60
    assert not (killed / "weights.safetensors").exists()
    subprocess.run([*command, "--out", str(killed), "--metrics", str(tmp_path / "killed-metrics")], check=True)
    resumed = json.loads((tmp_path / "killed-metrics/metrics.json").read_text())
    assert resumed["timing"]["resumed_from_epoch"] == interrupted_at
    subprocess.run([*command, "--out", str(tmp_path / "whole"), "--metrics", str(tmp_path / "whole-metrics")], check=True)
    assert same_weights(killed / "weights.safetensors", tmp_path / "whole/weights.safetensors")
    assert deterministic_part(tmp_path / "killed-metrics") == deterministic_part(tmp_path / "whole-metrics")


def test_checkpoints_of_another_configuration_are_not_resumed(tiny_profile, make_profile):
    profile = load_profile(tiny_profile)
    root = tiny_profile.parent
    run_training(profile, RunKey("moons", "hkr", 0), root / "run", root / "metrics", progress=False)
    changed = load_profile(make_profile(root, learning_rate=0.02))
    run_training(changed, RunKey("moons", "hkr", 0), root / "run", root / "metrics", progress=False)
    assert json.loads((root / "metrics/metrics.json").read_text())["timing"]["resumed_from_epoch"] is None


def test_a_non_finite_loss_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(tiny_profile, monkeypatch):
    hkr = type(get_method("hkr"))
    original = hkr.loss_function
    calls = {"count": 0}

    def poisoned(self, binary, params):
        loss = original(self, binary, params)

        def wrapped(outputs, labels):
            calls["count"] += 1
            value = loss(outputs, labels)
            return value * float("nan") if calls["count"] == 6 else value  # 3 steps per epoch: epoch 2, step 3

        return wrapped

    monkeypatch.setattr(hkr, "loss_function", poisoned)
    root = tiny_profile.parent
    with pytest.raises(
        TrainingDivergedError, match=r"non-finite \(nan\) at epoch 2, step 3; the last good checkpoint \(epoch 1\)"
    ):
        run_training(load_profile(tiny_profile), RunKey("moons", "hkr", 0), root / "run", root / "metrics", progress=False)
    assert torch.load(root / "run/checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (root / "run/weights.safetensors").exists()


def test_weights_round_trip_and_match_the_trained_model(tiny_profile):
    from lipbench.data import load_dataset, take_tensors
    from lipbench.nn.certificates import predictions

    root = tiny_profile.parent
    profile = load_profile(tiny_profile)
    run_training(profile, RunKey("moons", "hkr", 0), root / "run", root / "metrics", progress=False)
    model, metadata = load_weights(root / "run/weights.safetensors")
    assert (metadata.dataset, metadata.method, metadata.architecture) == ("moons", "hkr", "moons_dense")
    assert any(k.startswith("constrained.") and k.endswith("original") for k in load_file(root / "run/weights.safetensors"))
    x, y = take_tensors(load_dataset("moons", profile.path_of("data"), profile.prepare_params("moons")).test)
    with torch.no_grad():
        reloaded_accuracy = int((predictions(model(x)) == y).sum()) / len(y)
    metrics = json.loads((root / "metrics/metrics.json").read_text())
    assert reloaded_accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert metrics["test_accuracy"] > 0.6


def test_saved_weights_are_byte_identical_and_read_back_with_their_metadata(tmp_path):
    """safetensors writes metadata in a random order per save; lipbench sorts it."""
    metadata = ModelMetadata("moons", "hkr", "hkr", "moons_dense", (2,), 2, {"alpha": 50.0, "margin": 1.0})
    model = get_method("hkr").build_model((2,), 2, "moons_dense")
    paths = [tmp_path / f"{index}.safetensors" for index in range(6)]
    for path in paths:
        save_weights(path, export(model), metadata, constrained=model)
    assert len({path.read_bytes() for path in paths}) == 1
    plain, read = load_weights(paths[0])
    assert read == metadata
    x = torch.randn(5, 2)
    torch.testing.assert_close(plain(x), export(model).eval()(x))


def test_weights_that_do_not_match_the_architecture_are_refused(tiny_profile, tmp_path):
    from safetensors.torch import save_file

    root = tiny_profile.parent
    run_training(load_profile(tiny_profile), RunKey("moons", "hkr", 0), root / "run", root / "metrics", progress=False)
    with safe_open(str(root / "run/weights.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(root / "run/weights.safetensors")
    tensors["exported.0.weight"] = torch.zeros(32, 2)  # the first layer has 64 units
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(
        ValueError, match=r"bad.safetensors: weights do not match hkr's moons_dense.*0.weight has shape \(32, 2\)"
    ):
        load_weights(tmp_path / "bad.safetensors")


def test_pickle_checkpoints_are_refused_without_being_unpickled(tmp_path, no_unpickling):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "model.safetensors")  # a pickle in disguise
    torch.save({"weight": torch.zeros(2)}, tmp_path / "model.pt")
    for name in ("model.safetensors", "model.pt"):
        with pytest.raises(ValueError, match="never unpickles"):
            load_weights(tmp_path / name)


@pytest.mark.parametrize(
    "dataset, model, seed, message",
    [
        ("moons", "hkrr", 0, "model 'hkrr' is not in this profile's models"),
        ("cifar10", "hkr", 0, "dataset 'cifar10' is not in this profile's datasets"),
        ("moons", "hkr", 7, "seed 7 is not in this profile's seeds"),
    ],
)
def test_runs_outside_the_profile_are_refused_before_any_work(tiny_profile, dataset, model, seed, message):
    with pytest.raises(ProfileError, match=message):
        config_from_profile(load_profile(tiny_profile), RunKey(dataset, model, seed))


@pytest.mark.parametrize(
    "recipe, message",
    [
        ({"epochs": -1}, "epochs must be an integer > 0"),
        ({"learning_rate": "fast"}, "learning_rate must be a number"),
        ({"optimiser": "adam"}, "unknown recipe keys optimiser"),
        ({"architecture": "resnet"}, "unknown architecture 'resnet'"),
    ],
)
def test_bad_recipes_are_refused_before_any_work(tmp_path, make_profile, recipe, message):
    profile = load_profile(make_profile(tmp_path, **recipe))
    with pytest.raises(ValueError, match=message):
        config_from_profile(profile, RunKey("moons", "hkr", 0))


def test_cli_reports_errors_in_one_line_with_exit_status_2(tiny_profile, capsys):
    status = main(
        [
            "train",
            "--params",
            str(tiny_profile),
            "--dataset",
            "moons",
            "--model",
            "gnp",
            "--seed",
            "0",
            "--out",
            str(tiny_profile.parent / "x"),
            "--metrics",
            str(tiny_profile.parent / "y"),
        ]
    )
    assert status == 2
    error = capsys.readouterr().err
    assert "lipbench train: error:" in error and "model 'gnp' is not in this profile's models" in error
    assert "Traceback" not in error
    assert not (tiny_profile.parent / "x").exists()


def test_a_model_that_cannot_be_exported_is_never_recorded(tiny_profile, monkeypatch):
    """Nothing is written (weights, metrics, history) when the trained weights do not export;
    the epoch checkpoint is kept and the error says so."""
    from lipbench.train import run as training_run

    def refuse(model):
        raise ValueError("export(Sequential) result: 3.weight holds non-finite values (NaN or inf)")

    monkeypatch.setattr(training_run, "export", refuse)
    root = tiny_profile.parent
    with pytest.raises(TrainingDivergedError, match="cannot be exported.*nothing was recorded.*checkpoint is kept"):
        run_training(load_profile(tiny_profile), RunKey("moons", "hkr", 0), root / "run", root / "metrics", progress=False)
    assert sorted(path.name for path in (root / "run").iterdir()) == ["checkpoint.pt"]
    assert not (root / "metrics").exists()
