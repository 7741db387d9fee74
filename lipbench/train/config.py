"""What one training run is: dataset, model variant (a registered method + its parameters),
recipe and seed, resolved and validated before any expensive work."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from lipbench.methods import ARCHITECTURES, default_architecture, get_method, is_architecture

__all__ = ["Recipe", "TrainConfig", "resolve_train_config"]

_OPTIMIZERS = ("adam", "sgd")
_SCHEDULES = ("constant", "cosine")
_CORRECTIONS = ("strict", "lambda", "exact")
_PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Recipe:
    """How to train: optimiser, epochs, batch size, schedule, architecture options.

    ``batch_size`` is the global batch: under ``torchrun`` each rank takes its contiguous
    shard of every batch (see :mod:`lipbench.train.distributed`).

    ``conv_correction`` scales each Björck conv kernel: ``strict`` (default) by
    ``1/sqrt(ceil(k1/s1) ceil(k2/s2))``, a bound for any input size; ``lambda`` by the
    paper's Λ (eq. 11), not a bound; ``exact`` by the inverse of the convolution's own
    operator norm at the layer's input size (polyphase FFT, recomputed every step with
    autograd, the function certificates use), so each exported conv is bounded by exactly 1.

    Speed options (both change the trained weights slightly, so both are part of the
    config's fingerprint and of ``metrics.json``'s ``recipe``):

    * ``precision``: ``"fp32"`` (default) or ``"bf16"``: the network's forward runs under
      ``torch.autocast(bfloat16)`` on CUDA and CPU, i.e. its linear and convolution
      products (and the activations/pooling between them) run in bfloat16. The
      parametrisations (spectral normalisation, Björck, row normalisation) are computed
      once per step in fp32 outside autocast, the loss is computed in fp32 on the logits,
      and the parameters, their gradients and the optimiser state stay fp32. Certificates
      are computed later in fp32 on the exported model, so they stay strict.
    * ``compile``: ``torch.compile`` the model's forward (off by default; torch's
      compiler is only imported when on).
    """

    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    architecture: str | None = None
    conv_correction: str = "strict"
    eval_batch_size: int = 1024
    precision: str = "fp32"
    compile: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, Any], where: str) -> Recipe:
        names = {f.name for f in cls.__dataclass_fields__.values()}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(f"{where}: unknown recipe keys {', '.join(unknown)}; accepted: {', '.join(sorted(names))}")
        missing = sorted(name for name in ("epochs", "batch_size", "learning_rate") if name not in params)
        if missing:
            raise ValueError(f"{where}: the recipe needs {', '.join(missing)}")
        recipe = cls(**params)
        recipe.validate(where)
        return recipe

    def validate(self, where: str) -> None:
        def number(name: str, value: Any, minimum: float, integer: bool = False, strict: bool = True) -> None:
            kinds = (int,) if integer else (int, float)
            if not isinstance(value, kinds) or isinstance(value, bool) or value < minimum or (strict and value == minimum):
                bound = f"{'>' if strict else '>='} {minimum}"
                raise ValueError(f"{where}: {name} must be {'an integer' if integer else 'a number'} {bound}, got {value!r}")

        number("epochs", self.epochs, 0, integer=True)
        number("batch_size", self.batch_size, 0, integer=True)
        number("eval_batch_size", self.eval_batch_size, 0, integer=True)
        number("learning_rate", self.learning_rate, 0.0)
        number("weight_decay", self.weight_decay, 0.0, strict=False)
        for name, value, allowed in (
            ("optimizer", self.optimizer, _OPTIMIZERS),
            ("schedule", self.schedule, _SCHEDULES),
            ("conv_correction", self.conv_correction, _CORRECTIONS),
            ("precision", self.precision, _PRECISIONS),
        ):
            if value not in allowed:
                raise ValueError(f"{where}: {name} must be one of {', '.join(allowed)}, got {value!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"{where}: compile must be true or false, got {self.compile!r}")
        if self.architecture is not None and not is_architecture(self.architecture):
            raise ValueError(
                f"{where}: unknown architecture {self.architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}, "
                "or lipnet-<width>x<depth> / lipdense-<width>x<depth>"
            )


@dataclass(frozen=True)
class TrainConfig:
    """One (dataset, model variant, seed) run, fully resolved."""

    dataset: str
    model: str
    method: str
    method_params: dict[str, Any]
    recipe: Recipe
    seed: int
    architecture: str
    input_shape: tuple[int, ...]
    num_classes: int

    def as_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["input_shape"] = list(self.input_shape)
        return payload

    def fingerprint(self) -> str:
        """Identifies everything that determines the trained weights (for safe resuming)."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]


def resolve_train_config(
    dataset: str,
    model: str,
    model_params: Mapping[str, Any] | None,
    recipe_params: Mapping[str, Any],
    seed: int,
    input_shape: tuple[int, ...],
    num_classes: int,
) -> TrainConfig:
    """Validate and resolve a run. ``model_params`` may name the registered method with a
    ``method`` key (variants such as ``hkr_m2.12``; otherwise ``model`` is the method name) and
    the model's own ``architecture`` (e.g. ``lipnet-64x3`` for every layer family), which
    replaces the recipe's for this model."""
    where = f"train.{dataset}.{model}"
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{where}: seed must be an integer >= 0, got {seed!r}")
    params = dict(model_params or {})
    method_name = params.pop("method", model)
    own_architecture = params.pop("architecture", None)
    if own_architecture is not None and not (isinstance(own_architecture, str) and is_architecture(own_architecture)):
        raise ValueError(
            f"{where}: unknown architecture {own_architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}, "
            "or lipnet-<width>x<depth> / lipdense-<width>x<depth>"
        )
    method = get_method(method_name)
    resolved = method.resolve_params(params)
    recipe = Recipe.from_params(recipe_params, f"train.{dataset}.recipe")
    architecture = own_architecture or recipe.architecture or default_architecture(dataset, input_shape)
    return TrainConfig(
        dataset=dataset,
        model=model,
        method=method_name,
        method_params=resolved,
        recipe=recipe,
        seed=seed,
        architecture=architecture,
        input_shape=tuple(input_shape),
        num_classes=num_classes,
    )
