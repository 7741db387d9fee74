"""The certify, attack and verify stages on small trained digits models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lipbench.cli.main import main
from lipbench.data import load_dataset, prepare_dataset, take_tensors
from lipbench.evaluate import model_stages as stages
from lipbench.evaluate.attacks import run_attack_suite
from lipbench.evaluate.run import VerificationFailed, run_stage
from lipbench.evaluate.settings import evaluation_settings
from lipbench.profiles import ProfileError, load_profile
from lipbench.registry import RegistryError
from lipbench.runs import Layout, RunKey
from lipbench.summaries import AttackSummary, VerifySummary
from lipbench.train import load_weights, run_training

FAST_ATTACKS = {
    "pgd_l2": {"steps": 10, "rel_stepsize": 0.2},
    "cw_l2": {"steps": 30, "binary_search_steps": 3},
    "autoattack_l2": {"version": "custom", "attacks": ["apgd-ce"], "n_iter": 10},
}


def write_params(folder: Path, **evaluate_overrides) -> Path:
    evaluate = {
        "epsilons": [0.1, 0.3],
        "certify_points": 120,
        "attack_points": 40,
        "deepfool_points": 60,
        "attacks": ["fgm", "pgd_l2", "cw_l2", "deepfool_l2", "autoattack_l2"],
        "attack_options": FAST_ATTACKS,
    } | evaluate_overrides
    params = {
        "profile": "tiny",
        "root": ".",
        "params_file": "params.yaml",
        "paths": {key: str(folder / key) for key in ("data", "models", "evaluation", "metrics", "reports")},
        "datasets": ["digits"],
        "models": ["hkr", "standard"],
        "seeds": [0],
        "prepare": {"mirror": "", "digits": {"seed": 0, "test_fraction": 0.25}},
        "train": {
            "device": "cpu",
            "digits": {
                "recipe": {"epochs": 4, "batch_size": 64, "learning_rate": 0.005},
                "hkr": {"alpha": 50.0, "margin": 0.3},
                "standard": {},
            },
        },
        "evaluate": {
            "device": "cpu",
            "batch_size": 64,
            "workers": 1,
            "verify": {"ascent_steps": 3, "audit_points": 40, "audit_steps": 10, "layer_power_iterations": 10},
            "digits": evaluate,
        },
    }
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny profile with hkr and standard digits models trained (module-scoped: ~10 s)."""
    folder = tmp_path_factory.mktemp("stages")
    params = write_params(folder)
    profile = load_profile(params)
    prepare_dataset("digits", profile.path_of("data"), profile.prepare_params("digits"))
    for model in profile.models:
        run_training(profile, RunKey("digits", model, 0), progress=False)
    return params


def test_stages_run_certify_attack_verify_and_reuse_unchanged_models(trained):
    profile = load_profile(trained)
    keys = [RunKey("digits", "hkr", 0), RunKey("digits", "standard", 0)]
    for stage in ("certify", "attack", "verify"):
        metrics = run_stage(profile, stage, "digits", progress=False)
        assert list(metrics.summaries) == keys
        assert set(metrics.recomputed) == {"digits/hkr/seed0", "digits/standard/seed0"}
    layout = Layout.of(profile)
    verify = json.loads(layout.stage_metrics("verify", "digits").read_text())
    assert {s["seed0"]["status"] for s in verify["models"].values()} == {"verified"}
    attack = json.loads(layout.stage_metrics("attack", "digits").read_text())
    summary = AttackSummary.from_json(attack["models"]["hkr"]["seed0"])
    assert len(summary.pruned_call_ratio) == 2 and summary.calls_saved > 0
    assert summary.deepfool_curve.points == 60 and summary.headline_eps == 0.3  # the middle eps by default
    assert set(summary.per_attack_robust_accuracy) == {"fgm", "pgd_l2", "cw_l2", "deepfool_l2", "autoattack_l2"}
    assert attack["models"]["standard"]["seed0"]["clean_accuracy"] > 0.5
    # the gate checks the two minimal attacks, DeepFool on its longer curve: no other "attack"
    checks = VerifySummary.from_json(verify["models"]["hkr"]["seed0"]).minimal_attack_checks
    correct = np.load(layout.stage_arrays("certify", keys[0]))["correct"]
    assert set(checks) == {"cw_l2", "deepfool_l2"}
    assert checks["deepfool_l2"]["points"] == int(correct[:60].sum()) and checks["cw_l2"]["points"] == int(correct[:40].sum())
    for stage in ("certify", "attack", "verify"):
        again = run_stage(profile, stage, "digits", progress=False)
        assert again.recomputed == [], stage
        assert all(summary.reused for summary in again.summaries.values()), stage


def test_the_gate_fails_when_weights_are_scaled_after_certification(trained, tmp_path):
    profile = load_profile(trained)
    for stage in ("certify", "attack", "verify"):
        run_stage(profile, stage, "digits", progress=False)
    weights = profile.path_of("models") / "digits" / "hkr" / "seed0" / "weights.safetensors"
    original = weights.read_bytes()
    try:
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(weights)
        last = max(int(key.split(".")[1]) for key in tensors if key.startswith("exported.") and key.endswith("weight"))
        tensors[f"exported.{last}.weight"] = tensors[f"exported.{last}.weight"] * 2
        tensors[f"exported.{last}.bias"] = tensors[f"exported.{last}.bias"] * 2
        save_file(tensors, str(weights), metadata=metadata)
        with pytest.raises(VerificationFailed) as failure:
            run_stage(profile, "verify", "digits", progress=False)
        message = str(failure.value)
        assert "tiny:digits/hkr/seed0" in message and "exceeds the certified upper bound" in message
        record = json.loads((profile.path_of("metrics") / "verify" / "digits.json").read_text())
        assert record["models"]["hkr"]["seed0"]["status"] == "failed"
        assert record["models"]["standard"]["seed0"]["status"] == "verified"
        # the CLI reports it and exits 1 (no flag can turn the gate off)
        assert main(["verify", "--params", str(trained), "--dataset", "digits", "--no-progress"]) == 1
    finally:
        weights.write_bytes(original)
    assert run_stage(profile, "verify", "digits", progress=False).summary(RunKey("digits", "hkr", 0)).verified


def test_pruning_only_skips_what_is_decided_on_a_trained_digits_model(trained):
    """Certificate pruning changes nothing; eps-monotone pruning keeps what a smaller eps
    broke (pruned success = unpruned success or broken at a smaller eps, on the points
    certificates leave undecided), and the minimal attacks are identical."""
    profile = load_profile(trained)
    model, _ = load_weights(profile.path_of("models") / "digits" / "hkr" / "seed0" / "weights.safetensors")
    splits = load_dataset("digits", profile.path_of("data"), profile.prepare_params("digits"))
    x, y = take_tensors(splits.test, 60)
    from lipbench.evaluate.certification import certify_model

    radius = torch.from_numpy(certify_model(model, (1, 8, 8), x, y, [0.1]).radius)
    attacks = ["fgm", "pgd_l2", "deepfool_l2", "cw_l2"]
    options = {k: v for k, v in FAST_ATTACKS.items() if k in attacks}
    results = {
        prune: run_attack_suite(model, x, y, [0.05, 0.1, 0.3], attacks, radius, options=options, prune=prune, progress=False)
        for prune in (True, False)
    }
    pruned, unpruned = results[True], results[False]
    for name in ("deepfool_l2", "cw_l2"):
        np.testing.assert_array_equal(pruned.success[name], unpruned.success[name])
    for name in ("fgm", "pgd_l2"):
        undecided = pruned.clean_correct[None, :] & ~pruned.certified
        carried = np.logical_or.accumulate(pruned.success[name], axis=0)
        expected = undecided & (unpruned.success[name] | np.vstack([np.zeros_like(carried[:1]), carried[:-1]]))
        np.testing.assert_array_equal(pruned.success[name], expected)
    assert not (pruned.robust & ~unpruned.robust).any()  # pruning never makes a point robust
    assert sum(pruned.calls.values()) < sum(unpruned.calls.values())
    assert unpruned.certificate_violations.sum() == 0


@pytest.fixture
def no_attacks(monkeypatch):
    """The attack stage fails the test if it reaches the attacks."""

    def refuse(*args, **kwargs):
        raise AssertionError("an attack ran")

    monkeypatch.setattr(stages, "run_attack_suite", refuse)


def on_trained_models(trained: Path, folder: Path, **evaluate_overrides) -> Path:
    """A profile with its own digits evaluation settings, reading the trained profile's data
    and models, with a copy of its certified outputs (so the attack stage can start)."""
    run_stage(load_profile(trained), "certify", "digits", progress=False)
    shared = yaml.safe_load(trained.read_text())["paths"]
    folder.mkdir()
    path = write_params(folder, **evaluate_overrides)
    params = yaml.safe_load(path.read_text())
    params["paths"] |= {"data": shared["data"], "models": shared["models"]}
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(shared["evaluation"], params["paths"]["evaluation"])
    return path


def test_unknown_attacks_and_negative_eps_are_refused_before_any_attack(trained, tmp_path, no_attacks):
    # the guard is reachable: with valid (new) settings, the stage gets as far as the attacks
    valid = load_profile(on_trained_models(trained, tmp_path / "valid", attacks=["fgm"], attack_options={}))
    with pytest.raises(AssertionError, match="an attack ran"):
        run_stage(valid, "attack", "digits", progress=False)
    for name, overrides, error, message in [
        ("unknown", {"attacks": ["fgm", "fgsm"], "attack_options": {}}, RegistryError,
         "unknown attack 'fgsm'; known attacks: autoattack_l2, cw_l2"),
        ("negative", {"epsilons": [0.1, -0.5]}, ProfileError, r"every eps must be a finite number >= 0, got -0.5"),
        ("option", {"attack_options": {"pgd_l2": {"stepz": 3}}}, ValueError, "stepz"),
    ]:  # fmt: skip
        profile = load_profile(on_trained_models(trained, tmp_path / name, **overrides))
        with pytest.raises(error, match=message):
            run_stage(profile, "attack", "digits", progress=False)
        assert not Layout.of(profile).stage_metrics("attack", "digits").exists()


def test_a_weights_file_of_another_architecture_is_refused_before_any_attack(trained, no_attacks):
    profile = load_profile(trained)
    run_stage(profile, "certify", "digits", progress=False)
    weights = profile.path_of("models") / "digits" / "standard" / "seed0" / "weights.safetensors"
    original = weights.read_bytes()
    try:
        hkr = profile.path_of("models") / "digits" / "hkr" / "seed0" / "weights.safetensors"
        weights.write_bytes(hkr.read_bytes())  # an hkr model where the profile expects 'standard'
        with pytest.raises(ValueError, match="holds a hkr digits_dense model for digits, but the profile's digits/standard"):
            run_stage(profile, "attack", "digits", progress=False)
    finally:
        weights.write_bytes(original)


def test_a_stage_refuses_to_run_before_its_upstream_stage(tmp_path, trained):
    folder = tmp_path / "fresh"
    folder.mkdir()
    params = load_profile(trained).params | {"paths": dict(load_profile(trained).params["paths"]) | {"evaluation": str(folder)}}
    (folder / "params.yaml").write_text(yaml.safe_dump(dict(params)))
    with pytest.raises(FileNotFoundError, match="run the certify stage first"):
        run_stage(load_profile(folder / "params.yaml"), "attack", "digits", progress=False)


def test_external_lipbench_weights_are_evaluated_and_added_to_the_leaderboard(trained, tmp_path):
    from lipbench.cli.main import main as cli_main
    from lipbench.evaluate.external import evaluate_external
    from lipbench.report.inputs import read_inputs
    from lipbench.report.leaderboard import collect_entries

    profile = load_profile(trained)
    for stage in ("certify", "attack", "verify"):
        run_stage(profile, stage, "digits", progress=False)
    assert cli_main(["explain", "--params", str(trained), "--dataset", "digits"]) == 0  # the report reads it too
    shutil.copy(profile.path_of("models") / "digits" / "hkr" / "seed0" / "weights.safetensors", tmp_path / "mine.safetensors")
    entry = evaluate_external(profile, "digits", "hkr", tmp_path / "mine.safetensors", "mine", progress=False)
    assert entry["external"] and entry["name"] == "hKR_α^m (mine)"
    assert entry["verification"]["status"] == "verified" and entry["train_seconds"] is None
    names = {e["model"] for e in collect_entries(read_inputs(profile))}
    assert names == {"hkr", "standard", "mine"}
    # one command: evaluate and regenerate the leaderboard (md and html) of the profile
    weights = tmp_path / "mine.safetensors"
    argv = ["submit", "--params", str(trained), "--dataset", "digits", "--weights", str(weights), "--variant", "hkr"]
    assert cli_main([*argv, "--name", "theirs", "--no-progress"]) == 0
    reports = profile.path_of("reports")
    assert "hKR_α^m (theirs)" in (reports / "leaderboard.md").read_text()
    assert "theirs" in (reports / "leaderboard.html").read_text()
    ranked = json.loads((reports / "leaderboard.json").read_text())["datasets"]["digits"]
    assert {e["model"] for e in ranked} == {"hkr", "standard", "mine", "theirs"}


def test_submit_to_a_profile_never_run_is_one_error_before_any_stage(tmp_path, monkeypatch, capsys):
    from lipbench.cli.main import main as cli_main
    from lipbench.evaluate import external

    def no_stage(*args, **kwargs):
        raise AssertionError("a stage ran")

    monkeypatch.setattr(external, "evaluate_one", no_stage)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(_never_run_params(tmp_path)))
    argv = ["submit", "--params", str(params), "--dataset", "digits", "--model", str(tmp_path / "m.onnx")]
    assert cli_main(argv) == 2
    assert "inputs are missing" in capsys.readouterr().err
    assert not (tmp_path / "metrics" / "external").exists()


def _never_run_params(folder: Path) -> dict:
    return {
        "profile": "never",
        "root": ".",
        "params_file": "params.yaml",
        "paths": {key: str(folder / key) for key in ("data", "models", "evaluation", "metrics", "reports")},
        "datasets": ["digits"],
        "models": ["hkr"],
        "seeds": [0],
        "prepare": {"mirror": "", "digits": {"seed": 0, "test_fraction": 0.25}},
        "train": {"device": "cpu", "digits": {"recipe": {"epochs": 1, "batch_size": 64, "learning_rate": 0.005}, "hkr": {}}},
        "evaluate": {
            "device": "cpu",
            "batch_size": 64,
            "workers": 1,
            "verify": {"ascent_steps": 3, "audit_points": 40, "audit_steps": 10, "layer_power_iterations": 10},
            "digits": {"epsilons": [0.1], "certify_points": 40, "attack_points": 20, "deepfool_points": 20, "attacks": ["fgm"]},
        },
    }


def test_evaluate_refuses_pickles_and_mismatched_checkpoints_before_any_stage(trained, tmp_path, monkeypatch, no_unpickling):
    from lipbench.evaluate import external

    def no_stage(*args, **kwargs):
        raise AssertionError("a stage ran")

    monkeypatch.setattr(external, "evaluate_one", no_stage)
    profile = load_profile(trained)
    torch.save({"0.weight": torch.zeros(2)}, tmp_path / "model.pt")
    torch.save({"0.weight": torch.zeros(2)}, tmp_path / "disguised.safetensors")
    for name in ("model.pt", "disguised.safetensors"):
        with pytest.raises(ValueError, match="never unpickles"):
            external.evaluate_external(profile, "digits", "hkr", tmp_path / name, "x", progress=False)
    save_file({"0.weight": torch.zeros(3, 3)}, str(tmp_path / "small.safetensors"))
    with pytest.raises(ValueError, match="plain state dict without lipbench's architecture record"):
        external.evaluate_external(profile, "digits", "hkr", tmp_path / "small.safetensors", "small", progress=False)
    with pytest.raises(ValueError, match="--name"):
        external.evaluate_external(profile, "digits", "hkr", tmp_path / "small.safetensors", "../escape", progress=False)


def _with_common(path: Path, **common) -> Path:
    params = yaml.safe_load(path.read_text())
    params["evaluate"] |= common
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_attack_precision_and_compile_are_checked_and_change_only_the_attack_settings(tmp_path):
    default = evaluation_settings(load_profile(write_params(tmp_path)), "digits")
    assert (default.attack_precision, default.attack_compile) == ("fp32", False)
    bf16 = evaluation_settings(load_profile(_with_common(write_params(tmp_path), attack_precision="bf16")), "digits")
    assert bf16.for_stage("attack") != default.for_stage("attack")
    for stage in ("certify", "verify"):  # certificates and the gate are always float32
        assert bf16.for_stage(stage) == default.for_stage(stage)
    for common, message in [
        ({"attack_precision": "fp16"}, "evaluate.attack_precision must be one of fp32, bf16, got 'fp16'"),
        ({"attack_compile": "yes"}, "evaluate.attack_compile must be true or false, got 'yes'"),
    ]:
        profile = load_profile(_with_common(write_params(tmp_path), **common))
        with pytest.raises(ProfileError, match=message):
            evaluation_settings(profile, "digits")


def test_a_stage_reports_each_model_as_it_finishes_when_not_on_a_terminal(trained, capsys):
    """No terminal (DVC's log, CI): one line per computed model; reused models are silent."""
    profile = load_profile(trained)
    layout = Layout.of(profile)
    for key in (RunKey("digits", "hkr", 0), RunKey("digits", "standard", 0)):
        shutil.rmtree(layout.reuse_dir("certify", key), ignore_errors=True)
    capsys.readouterr()
    run_stage(profile, "certify", "digits", progress=True)  # pytest's stderr is not a terminal
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lipbench certify:")]
    assert [line.split(" done in ")[0] for line in lines] == [
        "lipbench certify: digits/hkr/seed0",
        "lipbench certify: digits/standard/seed0",
    ]
    run_stage(profile, "certify", "digits", progress=True)
    assert "done in" not in capsys.readouterr().err


def test_unchanged_models_are_copied_back_after_dvc_removed_the_stage_outputs(trained):
    """DVC deletes a stage's outputs before rerunning it (no `persist`): models whose inputs
    did not change come back byte-identical from the kept copies, without recomputation."""
    profile = load_profile(trained)
    layout = Layout.of(profile)
    run_stage(profile, "certify", "digits", progress=False)
    key = RunKey("digits", "hkr", 0)
    before = layout.stage_arrays("certify", key).read_bytes()
    shutil.rmtree(layout.stage_dataset_dir("certify", "digits"))
    again = run_stage(profile, "certify", "digits", progress=False)
    assert again.recomputed == [] and layout.stage_arrays("certify", key).read_bytes() == before


def test_a_clone_restored_from_dvc_cache_reuses_the_locked_outputs(trained, dvc_locked, monkeypatch):
    """A clone restored from DVC's cache has no kept copies: unchanged models come back from
    the stage's output as dvc.lock recorded it; a changed setting still recomputes them."""
    monkeypatch.chdir(trained.parent)  # DVC runs a stage in its wdir; lock paths are relative to it
    profile = load_profile(trained)
    layout = Layout.of(profile)
    keys = [RunKey("digits", "hkr", 0), RunKey("digits", "standard", 0)]
    run_stage(profile, "certify", "digits", progress=False)
    before = {key: layout.stage_arrays("certify", key).read_bytes() for key in keys}
    dvc_locked(trained.parent, "certify@digits", layout.stage_dataset_dir("certify", "digits"))

    def restored_clone() -> None:  # DVC removed the output; a fresh clone has no reuse folder
        shutil.rmtree(layout.stage_dataset_dir("certify", "digits"))
        shutil.rmtree(layout.reuse_dir("certify", keys[0]).parents[1])

    restored_clone()
    again = run_stage(profile, "certify", "digits", progress=False)
    assert again.recomputed == [] and all(summary.reused for summary in again.summaries.values())
    assert {key: layout.stage_arrays("certify", key).read_bytes() for key in keys} == before
    assert all(layout.reuse_dir("certify", key).joinpath("summary.json").is_file() for key in keys)

    restored_clone()
    original = trained.read_text()
    try:
        write_params(trained.parent, certify_points=100)
        changed = run_stage(load_profile(trained), "certify", "digits", progress=False)
    finally:
        trained.write_text(original)
    assert set(changed.recomputed) == {key.label for key in keys}


def test_a_recomputed_stage_output_is_byte_identical_and_reuse_keeps_the_measurements(trained):
    """DVC outputs hold no timing or environment (a recomputation gives the same bytes, so the
    lock does not change); the git-tracked records keep each model's measured seconds, also
    for models reused after DVC removed the outputs."""
    profile = load_profile(trained)
    layout = Layout.of(profile)
    stages = ("certify", "attack", "verify")

    def output_bytes(stage: str) -> dict[Path, bytes]:
        folder = layout.stage_dataset_dir(stage, "digits")
        return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}

    first = {stage: run_stage(profile, stage, "digits", progress=False) for stage in stages}
    before = {stage: output_bytes(stage) for stage in stages}
    for stage in stages:
        shutil.rmtree(layout.stage_dataset_dir(stage, "digits"))
        again = run_stage(profile, stage, "digits", progress=False)
        assert again.recomputed == []
        seconds = {key: summary.seconds for key, summary in again.summaries.items()}
        assert seconds == {key: summary.seconds for key, summary in first[stage].summaries.items()}
        assert all(value > 0 for value in seconds.values()) and all(s.environment for s in again.summaries.values())
    for stage in stages:  # from scratch: no output, no kept copy
        shutil.rmtree(layout.stage_dataset_dir(stage, "digits"))
        shutil.rmtree(layout.reuse_dir(stage, RunKey("digits", "hkr", 0)).parents[1])
        assert len(run_stage(profile, stage, "digits", progress=False).recomputed) == 2
        assert output_bytes(stage) == before[stage], stage
