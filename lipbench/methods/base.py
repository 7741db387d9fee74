"""The method abstraction and its registry.

A method is an architecture kit (how blocks become layers), a loss, its parameters and,
for adversarial training, how a training batch is perturbed. Register one with::

    @register_method("my_method")
    class MyMethod(Method):
        paper_name = "My method"
        description = "..."
        kit = "gnp"
        loss = "hkr"
        defaults = {"alpha": 10.0, "margin": 0.5}

Third-party packages declare the module holding such classes under the entry-point
group ``lipbench.methods`` (see ``examples/``); lipbench imports it on first lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lipbench.losses import Reduce, make_loss
from lipbench.methods.architectures import KITS, build_model, is_kit
from lipbench.registry import Registry

__all__ = ["Method", "METHODS", "register_method", "get_method", "list_methods"]

METHODS: Registry[type[Method]] = Registry("method", entry_point_group="lipbench.methods")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator registering a :class:`Method` subclass under ``name``."""

    def decorator(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method({name!r}) decorates Method subclasses, got {cls!r}")
        if not is_kit(cls.kit):
            raise ValueError(f"method {name!r}: kit must be one of {', '.join(KITS)} or a layer family, got {cls.kit!r}")
        cls.name = name
        return METHODS.register(name)(cls)

    return decorator


def get_method(name: str) -> Method:
    """An instance of the registered method ``name`` (RegistryError listing known names)."""
    return METHODS.get(name)()


def list_methods() -> list[str]:
    return METHODS.names()


class Method:
    """Base class: subclasses set the class attributes and may override the hooks."""

    name: ClassVar[str] = ""
    paper_name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kit: ClassVar[str] = "gnp"
    loss: ClassVar[str] = "hkr"
    #: Parameters of the loss (passed to :func:`lipbench.losses.make_loss`) with defaults.
    defaults: ClassVar[Mapping[str, float]] = {}
    #: Parameters fixed by the method (not settable), e.g. KR is hKR with alpha = 0.
    fixed: ClassVar[Mapping[str, float]] = {}
    #: Parameters used by :meth:`training_inputs` rather than the loss, with defaults.
    training_defaults: ClassVar[Mapping[str, Any]] = {}
    #: Where the method comes from (leaderboard fields): link, authors, venue.
    reference: ClassVar[Mapping[str, str]] = {"link": "", "authors": "", "venue": ""}

    @property
    def constrained(self) -> bool:
        """True when the network is built from 1-Lipschitz layers (certificates apply)."""
        return self.kit != "unconstrained"

    def resolve_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overridden by ``params``; unknown keys or non-numbers are a ValueError."""
        params = dict(params or {})
        accepted = {**self.defaults, **self.training_defaults}
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            fixed = [key for key in unknown if key in self.fixed]
            hint = f" ({', '.join(fixed)} is fixed by this method)" if fixed else ""
            raise ValueError(
                f"method {self.name!r} does not take {', '.join(unknown)}{hint}; it accepts: "
                f"{', '.join(f'{k} (default {v!r})' for k, v in accepted.items()) or 'no parameters'}"
            )
        resolved = {**accepted, **params}
        for key, value in resolved.items():
            wants_bool = isinstance(accepted[key], bool)
            if isinstance(value, bool) != wants_bool or not isinstance(value, (int, float)):
                kind = "a boolean" if wants_bool else "a number"
                raise ValueError(f"method {self.name!r}: parameter {key} must be {kind}, got {value!r}")
        return resolved

    def build_model(
        self, input_shape: tuple[int, ...], num_classes: int, architecture: str, correction: str = "strict"
    ) -> nn.Sequential:
        return build_model(architecture, self.kit, input_shape, num_classes, correction)

    def loss_function(
        self, binary: bool, params: Mapping[str, Any], reduce: Reduce | None = None
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """``loss(outputs, labels)`` of this method.

        ``reduce`` (data-parallel training): sums a detached count tensor over ranks. A
        method whose ``loss_function`` takes ``reduce`` promises a loss built from local
        sums over *global* normalisers (pass it on to :func:`~lipbench.losses.make_loss`),
        so that the ranks' losses add up to the single-process loss of the whole batch.
        Overrides with the older signature ``loss_function(self, binary, params)`` keep
        working: the trainer then normalises each rank's loss over its own shard (see
        :mod:`lipbench.train.distributed`).

        Learned loss variables: the loss may be an ``nn.Module`` with parameters (e.g.
        ARMOR_D's λ and ν). The trainer then optimises them beside the network's (one more
        parameter group, no weight decay), saves and restores its ``state_dict`` with the
        checkpoint, and averages their gradients over ranks; they are never part of the
        exported model. ``training_inputs`` receives this same object as ``loss``.
        """
        loss_params = {key: params[key] for key in self.defaults}
        return make_loss(self.loss, binary=binary, reduce=reduce, **loss_params, **self.fixed)

    def training_inputs(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        loss: Callable[[Tensor, Tensor], Tensor],
        params: Mapping[str, Any],
        bounds: tuple[float, float] | None,
        generator: torch.Generator,
    ) -> Tensor:
        """The inputs a training step uses; adversarial training perturbs them."""
        return x

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "paper_name": self.paper_name,
            "description": self.description,
            "kit": self.kit,
            "loss": self.loss,
            "constrained": self.constrained,
            "defaults": {**self.defaults, **self.training_defaults},
            "fixed": dict(self.fixed),
            "reference": dict(self.reference),
        }
