"""The worked example plug-in registers through the entry-point group and trains."""

from __future__ import annotations

import importlib.metadata
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import lipbench.methods.base as methods_base
from lipbench.registry import Registry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lipbench_example_method"


def test_the_example_declares_its_module_under_the_entry_point_group():
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    target = project["project"]["entry-points"]["lipbench.methods"]["hkr_ce"]
    assert (EXAMPLE / (target.replace(".", "/") + ".py")).is_file()


def test_the_example_method_is_found_through_the_entry_point_and_trains_a_step(monkeypatch):
    registry: Registry = Registry("method", entry_point_group="lipbench.methods")
    monkeypatch.setattr(methods_base, "METHODS", registry)  # keep the global registry clean
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delitem(sys.modules, "lipbench_example_method.method", raising=False)
    entry_point = importlib.metadata.EntryPoint("hkr_ce", "lipbench_example_method.method", "lipbench.methods")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [entry_point] if group == "lipbench.methods" else [])
    assert "hkr_ce" in registry.names()
    method = registry.get("hkr_ce")()
    params = method.resolve_params({"ce_weight": 1.0})
    model = method.build_model((1, 8, 8), 10, "digits_dense")
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 10
    loss = method.loss_function(False, params)(model(x), y)
    assert torch.isfinite(loss)
    loss.backward()
    with pytest.raises(ValueError, match="does not take beta"):
        method.resolve_params({"beta": 1.0})


def test_the_example_loss_adds_up_over_data_parallel_shards(monkeypatch):
    """Two ranks holding the same shard: with reduce = "times two", each rank's loss is half
    the single-process loss of the concatenated batch (both terms take the global counts)."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delitem(sys.modules, "lipbench_example_method.method", raising=False)
    registry: Registry = Registry("method")
    monkeypatch.setattr(methods_base, "METHODS", registry)
    module = importlib.import_module("lipbench_example_method.method")
    method = module.HKRWithCrossEntropy()
    params = method.resolve_params({"ce_weight": 1.0})
    generator = torch.Generator().manual_seed(0)
    outputs, labels = torch.randn(12, 10, generator=generator), torch.arange(12) % 10
    per_rank = method.loss_function(False, params, reduce=lambda counts: counts * 2)(outputs, labels)
    whole = method.loss_function(False, params)(torch.cat([outputs, outputs]), torch.cat([labels, labels]))
    torch.testing.assert_close(2 * per_rank, whole)
