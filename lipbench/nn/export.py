"""Export a constrained model to plain torch layers, and build unconstrained twins."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

__all__ = ["export", "unconstrained_twin", "check_finite"]


def check_finite(model: nn.Module, what: str = "model") -> None:
    """Raise ``ValueError`` naming the first parameter or buffer that holds NaN or inf."""
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(
                f"{what}: {name} holds non-finite values (NaN or inf); the weights are unusable. "
                "Retrain or load another checkpoint."
            )


def _rebuild(module: nn.Module, leaf: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """Copy ``module``'s tree, mapping every node through ``leaf`` (None = recurse/copy)."""
    replaced = leaf(module)
    if replaced is not None:
        return replaced
    if not module._modules:
        return copy.deepcopy(module)
    # Deep-copy this node alone (parameters, buffers, hooks), then rebuild its children.
    children = module._modules
    module._modules = {}
    try:
        clone = copy.deepcopy(module)
    finally:
        module._modules = children
    clone._modules = {name: None if child is None else _rebuild(child, leaf) for name, child in children.items()}
    return clone


def export(model: nn.Module) -> nn.Module:
    """A plain torch copy of ``model``: every constrained layer becomes ``nn.Linear`` /
    ``nn.Conv2d`` holding its effective weight, evaluated from the current parameters.

    No cache from the last training forward is reused, so the export equals the
    eval-mode model even right after an optimiser step. The result is in eval mode, has
    no parametrizations, and does not share storage with ``model``.
    """
    check_finite(model, f"export({type(model).__name__})")

    def leaf(module: nn.Module) -> nn.Module | None:
        export_plain = getattr(module, "export_plain", None)
        return export_plain() if callable(export_plain) else None

    plain = _rebuild(model, leaf)
    plain.eval()
    for parameter in plain.parameters():
        parameter.requires_grad_(False)
    check_finite(plain, f"export({type(model).__name__}) result")
    return plain


def unconstrained_twin(model: nn.Module, pooling: Literal["max", "avg"] = "max") -> nn.Module:
    """The same architecture with unconstrained blocks: ``nn.Linear`` / ``nn.Conv2d``,
    ReLU for GroupSort/FullSort, max (or average) pooling for L2-norm pooling.

    Weights are freshly initialised (PyTorch defaults); nothing is shared with ``model``.
    """
    if pooling not in ("max", "avg"):
        raise ValueError(f"unconstrained_twin: pooling must be 'max' or 'avg', got {pooling!r}")

    def leaf(module: nn.Module) -> nn.Module | None:
        twin = getattr(module, "unconstrained_twin", None)
        if not callable(twin):
            return None
        try:
            return twin(pooling=pooling)
        except TypeError:
            return twin()

    return _rebuild(model, leaf)
