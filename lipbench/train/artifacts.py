"""Trained-model files: safetensors weights with the metadata needed to rebuild the model.

``weights.safetensors`` holds ``exported.*`` (the plain model every evaluation uses) and
``constrained.*`` (the parametrised model, for fine-tuning), plus metadata: dataset, model
variant, method, architecture, input shape, classes, method parameters. Pickle files are
never read: safetensors cannot execute code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save
from torch import nn

from lipbench.io import atomic_path
from lipbench.methods import get_method
from lipbench.nn import export
from lipbench.train.config import TrainConfig

__all__ = [
    "WEIGHTS_FORMAT",
    "ModelMetadata",
    "save_weights",
    "load_weights",
    "build_from_metadata",
    "read_safetensors",
    "canonical_safetensors",
    "check_state_dict",
]

WEIGHTS_FORMAT = "lipbench-weights-1"
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


@dataclass(frozen=True)
class ModelMetadata:
    dataset: str
    model: str
    method: str
    architecture: str
    input_shape: tuple[int, ...]
    num_classes: int
    method_params: dict[str, Any]
    conv_correction: str = "strict"

    @classmethod
    def of(cls, config: TrainConfig) -> ModelMetadata:
        """The metadata of a resolved training run."""
        return cls(
            config.dataset,
            config.model,
            config.method,
            config.architecture,
            config.input_shape,
            config.num_classes,
            config.method_params,
            config.recipe.conv_correction,
        )

    def to_strings(self) -> dict[str, str]:
        return {
            "format": WEIGHTS_FORMAT,
            "dataset": self.dataset,
            "model": self.model,
            "method": self.method,
            "architecture": self.architecture,
            "input_shape": json.dumps(list(self.input_shape)),
            "num_classes": str(self.num_classes),
            "method_params": json.dumps(self.method_params, sort_keys=True),
            "conv_correction": self.conv_correction,
        }

    @classmethod
    def from_strings(cls, metadata: Mapping[str, str], where: str) -> ModelMetadata:
        if metadata.get("format") != WEIGHTS_FORMAT:
            raise ValueError(f"{where}: not a lipbench weights file (metadata format {metadata.get('format')!r})")
        try:
            return cls(
                dataset=metadata["dataset"],
                model=metadata["model"],
                method=metadata["method"],
                architecture=metadata["architecture"],
                input_shape=tuple(json.loads(metadata["input_shape"])),
                num_classes=int(metadata["num_classes"]),
                method_params=json.loads(metadata["method_params"]),
                conv_correction=metadata.get("conv_correction", "strict"),
            )
        except (KeyError, ValueError) as error:
            raise ValueError(f"{where}: incomplete lipbench metadata ({error})") from None


def build_from_metadata(metadata: ModelMetadata) -> nn.Sequential:
    """A freshly initialised constrained (or unconstrained) model of the recorded architecture."""
    method = get_method(metadata.method)
    return method.build_model(metadata.input_shape, metadata.num_classes, metadata.architecture, metadata.conv_correction)


def canonical_safetensors(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its metadata entries in sorted order.

    safetensors writes the metadata from a hash map, in a random order on every save, so
    two saves of the same weights differ byte for byte (and DVC sees a new file). Sorting
    the entries keeps the header's length, the tensors and their offsets unchanged."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > length:  # not written by safetensors' serialiser: leave the file as it is
        return data
    return data[:8] + text.ljust(length, b" ") + data[8 + length :]


def _write_weights(path: str | Path, groups: Mapping[str, nn.Module], metadata: ModelMetadata) -> None:
    """Write ``{prefix}.{key}`` tensors of each module's state dict atomically (temp file +
    rename), byte-identical for identical weights and metadata."""
    tensors = {
        f"{prefix}.{key}": value.detach().cpu().contiguous()
        for prefix, module in groups.items()
        for key, value in module.state_dict().items()
    }
    with atomic_path(path) as temporary:
        temporary.write_bytes(canonical_safetensors(save(tensors, metadata=metadata.to_strings())))


def save_weights(path: str | Path, plain: nn.Module, metadata: ModelMetadata, constrained: nn.Module | None = None) -> None:
    """Write an exported model's weights (``exported.*``) and, when given, the constrained
    model's (``constrained.*``, for fine-tuning) with lipbench metadata, atomically."""
    groups = {"exported": plain} | ({"constrained": constrained} if constrained is not None else {})
    _write_weights(path, groups, metadata)


def _pickle_message(path: Path) -> str:
    return (
        f"{path}: looks like a pickle/torch.save checkpoint; lipbench never unpickles files (unpickling can run "
        "arbitrary code). Convert it where you trust it: safetensors.torch.save_file(model.state_dict(), "
        "'model.safetensors'), and pass the .safetensors file."
    )


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4)
    pickle_protocol = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    return pickle_protocol or head == b"PK\x03\x04"  # raw pickle, or torch.save's zip container


def read_safetensors(path: Path, device: str = "cpu") -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a safetensors file. Pickle checkpoints (by suffix, or by their
    magic bytes once safetensors cannot parse the file) are refused and never unpickled."""
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise ValueError(_pickle_message(path))
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return metadata, load_file(str(path), device=device)
    except (SafetensorError, OSError) as error:
        if _looks_like_pickle(path):
            raise ValueError(_pickle_message(path)) from None
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None


def check_state_dict(model: nn.Module, tensors: Mapping[str, torch.Tensor], context: str) -> None:
    """Raise ``ValueError`` (``context: problems``) unless ``tensors`` fit ``model`` exactly."""
    expected = model.state_dict()
    problems = [f"missing {key}" for key in sorted(set(expected) - set(tensors))]
    problems += [f"unexpected {key}" for key in sorted(set(tensors) - set(expected))]
    problems += [
        f"{key} has shape {tuple(tensors[key].shape)}, the architecture needs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in tensors and tensors[key].shape != value.shape
    ]
    if problems:
        raise ValueError(f"{context}: {'; '.join(problems[:10])}")


def load_weights(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Sequential, ModelMetadata]:
    """The exported plain model (eval mode) and its metadata.

    Raises ``ValueError`` naming the file for pickle files, non-lipbench files, and weights
    that do not match the recorded architecture (missing, unexpected or mis-shaped tensors).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    raw_metadata, tensors = read_safetensors(path, str(device))
    metadata = ModelMetadata.from_strings(raw_metadata, str(path))
    plain = export(build_from_metadata(metadata))
    exported = {k.removeprefix("exported."): v for k, v in tensors.items() if k.startswith("exported.")}
    check_state_dict(
        plain,
        exported,
        f"{path}: weights do not match {metadata.method}'s {metadata.architecture} architecture for {metadata.dataset}",
    )
    plain.load_state_dict(exported)
    return plain.to(device).eval(), metadata
