"""Plug-in architectures (entry point ``lipbench.architectures``) and the ``--weights`` architecture check."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_foreign_models import SHAPE, _train, write_card, write_params
from torch import nn

from lipbench.cli.main import main
from lipbench.evaluate import external, plugins
from lipbench.methods.architectures import build_model
from lipbench.nn import export, lipschitz_upper_bound
from lipbench.profiles import load_profile
from lipbench.registry import Registry
from lipbench.runs import RunKey
from lipbench.train import config_from_profile
from lipbench.train.artifacts import ModelMetadata, save_weights

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lipbench_example_architecture"
GROUP = "lipbench.architectures"


@pytest.fixture(scope="module")
def params(tmp_path_factory) -> Path:
    from lipbench.data import prepare_dataset

    path = write_params(tmp_path_factory.mktemp("plugins"))
    profile = load_profile(path)
    prepare_dataset("digits", profile.path_of("data"), profile.prepare_params("digits"))
    return path


@pytest.fixture
def example(monkeypatch) -> Registry:
    """A fresh plug-in registry that finds the example package through a (monkeypatched) entry point."""
    registry: Registry = Registry("plug-in architecture", entry_point_group=GROUP)
    monkeypatch.setattr(plugins, "ARCHITECTURE_PLUGINS", registry)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delitem(sys.modules, "lipbench_example_architecture.model", raising=False)
    entry_point = importlib.metadata.EntryPoint("example_small_cnn", "lipbench_example_architecture.model", GROUP)
    original = importlib.metadata.entry_points

    def entry_points(**selection):  # the example as if installed; every other group as it is
        return [entry_point] if selection.get("group") == GROUP else original(**selection)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return registry


def _trained_weights(params: Path, folder: Path) -> tuple[nn.Module, Path, Path]:
    from lipbench_example_architecture.model import small_cnn

    torch.manual_seed(0)
    model = _train(small_cnn(SHAPE, 10), params, steps=200)
    weights = folder / "mine.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(weights))
    card = write_card(folder / "mine.card.yaml", architecture="example small CNN (ReLU)", claimed_clean_accuracy=0.9)
    return model, weights, card


def test_the_example_declares_its_module_under_the_entry_point_group():
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    target = project["project"]["entry-points"][GROUP]["example_small_cnn"]
    assert (EXAMPLE / (target.replace(".", "/") + ".py")).is_file()


def test_a_plugin_architecture_is_evaluated_end_to_end_into_a_verified_entry(example, params, tmp_path, capsys):
    assert example.names() == ["example_small_cnn"]
    model, weights, card = _trained_weights(params, tmp_path)
    argv = ["evaluate", "--params", str(params), "--dataset", "digits", "--architecture", "example_small_cnn"]
    code = main(argv + ["--weights", str(weights), "--card", str(card), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    entry = json.loads((load_profile(params).path_of("metrics") / "external" / "digits-mine.json").read_text())
    assert entry["verification"]["status"] == "verified" and entry["external"] and entry["clean_acc"] > 0.5
    assert entry["model_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert "plug-in architecture example_small_cnn" in entry["footnote"] and not entry["constrained"]
    # the bound from the traced graph is the chain rule's bound of the same network, logit by logit
    foreign = plugins.load_plugin("example_small_cnn", weights, _card(card), _info(params), "digits")
    native = lipschitz_upper_bound(model.eval(), SHAPE)
    assert math.isclose(foreign.upper.whole_map, native.whole_map, rel_tol=1e-6)
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(foreign.upper.per_logit, native.per_logit))


def _card(path: Path):
    from lipbench.evaluate.model_card import load_model_card

    return load_model_card(path)


def _info(params: Path):
    from lipbench.data import load_dataset

    profile = load_profile(params)
    return load_dataset("digits", profile.path_of("data"), profile.prepare_params("digits")).info


def _no_stage(monkeypatch) -> None:
    def no_stage(*args, **kwargs):
        raise AssertionError("a stage ran")

    monkeypatch.setattr(external, "evaluate_one", no_stage)


def test_weights_that_do_not_fit_the_plugin_are_refused_before_any_stage(example, params, tmp_path, monkeypatch):
    _, weights, card = _trained_weights(params, tmp_path)
    _no_stage(monkeypatch)
    save_file({"0.weight": torch.zeros(16, 1, 3, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="does not fit plug-in architecture 'example_small_cnn': missing 0.bias"):
        external.evaluate_foreign(
            load_profile(params), "digits", tmp_path / "other.safetensors", card, "x", False, "example_small_cnn"
        )
    with pytest.raises(KeyError, match="unknown plug-in architecture 'nope'; known plug-in architectures: example_small_cnn"):
        external.evaluate_foreign(load_profile(params), "digits", weights, card, "x", False, "nope")
    assert not (load_profile(params).path_of("metrics") / "external" / "digits-x.json").exists()


def test_a_plugin_with_an_operator_without_a_rule_is_refused_naming_it(example, params, tmp_path, monkeypatch):
    class Softplus(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.softplus(x)  # 1-Lipschitz, but the graph bound has no rule for it: refused

    @plugins.register_architecture("bad_net")
    def bad_net(input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), Softplus(), nn.Linear(32, num_classes))

    torch.manual_seed(0)
    save_file(bad_net(SHAPE, 10).state_dict(), str(tmp_path / "bad.safetensors"))
    card = write_card(tmp_path / "bad.card.yaml")
    _no_stage(monkeypatch)
    with pytest.raises(ValueError, match="node 'softplus' .call_function softplus. is not supported; supported: Linear"):
        external.evaluate_foreign(load_profile(params), "digits", tmp_path / "bad.safetensors", card, "bad", False, "bad_net")


def _hkr_config(params: Path):
    profile = load_profile(params)
    return profile, config_from_profile(profile, RunKey("digits", "hkr", 0))


def test_a_plain_state_dict_is_refused_even_when_its_shapes_fit_the_variant(params, tmp_path, monkeypatch):
    """The deel-torchlip case: a GroupSort2 MLP's tensors have the shapes of lipbench's FullSort network."""
    profile, config = _hkr_config(params)
    plain = export(build_model(config.architecture, "gnp", SHAPE, 10))
    save_file({key: value.contiguous() for key, value in plain.state_dict().items()}, str(tmp_path / "torchlip.safetensors"))
    _no_stage(monkeypatch)
    with pytest.raises(ValueError, match="plain state dict without lipbench's architecture record.*--architecture NAME"):
        external.evaluate_external(profile, "digits", "hkr", tmp_path / "torchlip.safetensors", "torchlip", progress=False)
    assert not (profile.path_of("metrics") / "external" / "digits-torchlip.json").exists()


def test_lipbench_weights_at_chance_level_are_never_published(params, tmp_path, monkeypatch):
    profile, config = _hkr_config(params)
    plain = export(build_model(config.architecture, "gnp", SHAPE, 10))
    with torch.no_grad():
        for parameter in plain.parameters():
            parameter.zero_()  # constant logits: every point gets class 0
    save_weights(tmp_path / "chance.safetensors", plain, ModelMetadata.of(config))
    _no_stage(monkeypatch)
    with pytest.raises(ValueError, match="at chance level"):
        external.evaluate_external(profile, "digits", "hkr", tmp_path / "chance.safetensors", "chance", progress=False)
    assert not (profile.path_of("metrics") / "external" / "digits-chance.json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--architecture", "example_small_cnn"], "--architecture NAME needs --weights"),
        (["--architecture", "a", "--weights", "w.safetensors", "--variant", "hkr"], "drop --variant"),
        (["--weights", "w.safetensors", "--variant", "hkr", "--card", "c.yaml"], "--card goes with"),
    ],
)
def test_the_cli_refuses_mixed_plugin_forms_with_exit_2(params, argv, message, capsys):
    assert main(["evaluate", "--params", str(params), "--dataset", "digits", *argv]) == 2
    assert message in capsys.readouterr().err
