"""Method registry: every method trains a step on every dataset's shape; registry rules."""

from __future__ import annotations

import importlib.metadata
import math

import pytest
import torch

import lipbench.nn as lnn
from lipbench.data import DATASETS, get_dataset
from lipbench.methods import ARCHITECTURES, METHODS, Method, default_architecture, get_method, register_method
from lipbench.nn.families import LAYER_FAMILIES
from lipbench.registry import Registry, RegistryError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: torch on one thread for the module


def _method_dataset_pairs() -> list[tuple[str, str]]:
    """Every method on every dataset's shape; layer-family methods (two per family, tested layer
    by layer in tests/nn and on a small LipNet in test_family_methods.py) on the small shapes only."""
    small = {name for name in DATASETS.names() if math.prod(get_dataset(name).info.input_shape) <= 28 * 28}
    return [
        (method, dataset)
        for method in METHODS.names()
        for dataset in DATASETS.names()
        if get_method(method).kit not in LAYER_FAMILIES or dataset in small
    ]


@pytest.mark.parametrize(("method_name", "dataset"), _method_dataset_pairs())
def test_every_method_trains_one_step_on_every_dataset_shape(method_name, dataset):
    torch.manual_seed(0)
    info = get_dataset(dataset).info
    method = get_method(method_name)
    params = method.resolve_params({"steps": 1} if "steps" in method.training_defaults else {})
    model = method.build_model(info.input_shape, info.num_classes, default_architecture(dataset, info.input_shape))
    loss_function = method.loss_function(binary=info.binary, params=params)
    x = torch.rand(4, *info.input_shape)
    y = torch.tensor([0, 1, 0, 1]) if info.binary else torch.arange(4) % info.num_classes
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs = method.training_inputs(model, x, y, loss_function, params, (0.0, 1.0), torch.Generator().manual_seed(0))
    outputs = model(inputs)
    assert outputs.shape == (4, 1 if info.binary else info.num_classes)
    loss = loss_function(outputs, y)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_architectures_say_where_they_come_from(architecture):
    assert len(ARCHITECTURES[architecture].source) > 40


@pytest.mark.parametrize("dataset", ["moons", "digits", "mnist", "cifar10"])
def test_gnp_networks_are_certified_1_lipschitz_per_logit(dataset):
    info = get_dataset(dataset).info
    model = get_method("hkr").build_model(info.input_shape, info.num_classes, default_architecture(dataset, info.input_shape))
    bound = lnn.lipschitz_upper_bound(model, info.input_shape)
    assert max(bound.per_logit) <= 1 + 1e-4


def test_adversarial_training_inputs_stay_in_the_ball_and_the_box():
    method = get_method("adv")
    params = method.resolve_params({"epsilon": 0.5, "steps": 3})
    model = method.build_model((1, 8, 8), 10, "digits_dense")
    loss = method.loss_function(False, params)
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    adversarial = method.training_inputs(model, x, y, loss, params, (0.0, 1.0), torch.Generator().manual_seed(0))
    distance = (adversarial - x).flatten(1).norm(dim=1)
    assert float(distance.max()) <= 0.5 + 1e-5 and float(distance.max()) > 0.1
    assert float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1
    with torch.no_grad():
        assert float(loss(model(adversarial), y)) > float(loss(model(x), y))


def test_method_params_are_checked():
    with pytest.raises(ValueError, match="does not take temperature"):
        get_method("hkr").resolve_params({"temperature": 2.0})
    with pytest.raises(ValueError, match="alpha is fixed by this method"):
        get_method("kr").resolve_params({"alpha": 2.0})
    with pytest.raises(ValueError, match="must be a number"):
        get_method("hkr").resolve_params({"alpha": "50"})
    assert get_method("hkr").resolve_params({"margin": 2.12}) == {"alpha": 50.0, "margin": 2.12}


def test_registry_refuses_duplicates_and_lists_known_names():
    with pytest.raises(RegistryError, match="duplicate method name 'hkr'"):

        @register_method("hkr")
        class Again(Method):
            pass

    known = ", ".join(METHODS.names())
    with pytest.raises(RegistryError, match=f"unknown method 'hrk'; known methods: {known}$"):
        get_method("hrk")


def test_third_party_methods_register_through_the_entry_point_group(monkeypatch):
    registry: Registry = Registry("method", entry_point_group="lipbench.methods")

    def register(target: Registry) -> None:
        target.add("plugin_method", object)

    entry_point = importlib.metadata.EntryPoint(name="plugin", value="x:y", group="lipbench.methods")
    monkeypatch.setattr(importlib.metadata.EntryPoint, "load", lambda self: register)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [entry_point] if group == "lipbench.methods" else [])
    assert "plugin_method" in registry.names()
