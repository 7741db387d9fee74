"""Plug-in architectures: a model built by another package's own constructor, with a safetensors state dict.

A package declares a module under the entry-point group ``lipbench.architectures``; importing it registers
its constructors with :func:`register_architecture`, as methods register under ``lipbench.methods``
(``examples/lipbench_example_architecture``). A constructor takes ``(input_shape, num_classes)`` and returns
an ``nn.Module`` mapping a batch of inputs to logits. ``lipbench evaluate --architecture NAME --weights
FILE.safetensors --card CARD.yaml`` builds it, loads the state dict exactly (every key and shape; pickles
refused), and from there treats it as any model built elsewhere (:mod:`lipbench.evaluate.foreign`): the
card is checked against the dataset, the strict bound comes from the traced graph
(:func:`lipbench.nn.graph_lipschitz_upper_bound`: an operator without a rule is refused, naming it), and the
architecture evaluated is the constructor's code, never one guessed from the tensors' shapes.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lipbench.data import DatasetInfo
from lipbench.evaluate.foreign import ForeignModel, assemble, check_card
from lipbench.evaluate.model_card import ModelCard
from lipbench.registry import Registry
from lipbench.train.artifacts import check_state_dict, read_safetensors

__all__ = ["ARCHITECTURE_PLUGINS", "register_architecture", "plugin_source", "load_plugin"]

#: Constructors ``(input_shape, num_classes) -> nn.Module`` of plug-in packages (entry-point group below).
ARCHITECTURE_PLUGINS: Registry[Callable[[tuple[int, ...], int], nn.Module]] = Registry(
    "plug-in architecture", entry_point_group="lipbench.architectures"
)


def register_architecture(name: str) -> Callable:
    """Decorator: ``@register_architecture("my_net")`` on a constructor ``(input_shape, num_classes)``."""
    return ARCHITECTURE_PLUGINS.register(name)


def plugin_source(name: str) -> str:
    """ "plug-in architecture NAME (module, package version)" for the entry's footnote."""
    constructor = ARCHITECTURE_PLUGINS.get(name)
    module = getattr(constructor, "__module__", "?")
    try:
        version = importlib.metadata.version(module.split(".")[0].replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = "not installed as a distribution"
    return f"plug-in architecture {name} ({module}.{getattr(constructor, '__qualname__', '?')}, {version})"


def _constructed(name: str, card: ModelCard) -> nn.Module:
    constructor = ARCHITECTURE_PLUGINS.get(name)
    try:
        model = constructor(tuple(card.input_shape), card.num_classes)
    except Exception as error:  # the plug-in's own code: name it
        raise ValueError(
            f"plug-in architecture {name!r}: its constructor failed for input shape {list(card.input_shape)} and "
            f"{card.num_classes} classes ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"plug-in architecture {name!r}: the constructor returned {type(model).__name__}, not an nn.Module")
    return model


def load_plugin(name: str, weights: Path, card: ModelCard, info: DatasetInfo, dataset: str) -> ForeignModel:
    """Build plug-in architecture ``name``, load ``weights`` into it exactly, check it against ``card`` and the
    dataset, and compute its strict graph bound (``ValueError`` naming the problem and the fix)."""
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"weights file {weights} does not exist")
    check_card(card, info, dataset)
    _, tensors = read_safetensors(weights)
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{weights}: tensor {key!r} holds NaN or inf values; the model is unusable")
    model = _constructed(name, card)
    check_state_dict(model, tensors, f"{weights}: does not fit plug-in architecture {name!r}")
    model.load_state_dict(tensors)
    return assemble(weights, model.eval(), card, info, plugin_source(name))
