"""Mixed precision for a training step (the recipe's ``precision``), shared by the
training loop and the speed benchmark so that both run exactly the same step."""

from __future__ import annotations

from contextlib import ExitStack

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["parametrized_weights", "precision_context"]


def parametrized_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, tensor name)`` of every parametrised weight of ``model`` (spectral
    normalisation, Björck, row normalisation)."""
    return [
        (module, name) for module in model.modules() if parametrize.is_parametrized(module) for name in module.parametrizations
    ]


def precision_context(precision: str, device: torch.device, parametrized: list[tuple[nn.Module, str]]) -> ExitStack:
    """The context one step runs in. ``"bf16"``: autocast, with the parametrised weights
    (from :func:`parametrized_weights`) computed first, once, in fp32 and cached for the
    step's forward passes. ``"fp32"``: nothing (the step runs exactly as without it)."""
    stack = ExitStack()
    if precision == "bf16":
        stack.enter_context(parametrize.cached())
        for module, name in parametrized:
            getattr(module, name)  # computed outside autocast: fp32, cached until the step ends
        stack.enter_context(torch.autocast(device_type=device.type, dtype=torch.bfloat16))
    return stack
