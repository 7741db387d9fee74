"""Evaluate an externally trained checkpoint through the same certify, attack and verify
code as the pipeline's own models, and add it to the profile's leaderboard.

The checkpoint must be a safetensors file (pickles are refused and never opened as
pickles): either a lipbench weights file, or a plain state dict of the exported
architecture of ``--model`` on ``--dataset`` (keys as in ``export(model).state_dict()``,
optionally prefixed ``exported.``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from lipbench.entries import build_entry
from lipbench.evaluate.model_stages import check_weights_match
from lipbench.evaluate.run import VerificationFailed, evaluate_one, fingerprint
from lipbench.evaluate.settings import evaluation_settings
from lipbench.io import write_json_atomic
from lipbench.methods import get_method
from lipbench.nn import export
from lipbench.profiles import Profile
from lipbench.runs import Layout, RunKey
from lipbench.summaries import ModelDescription, Reference
from lipbench.train import config_from_profile
from lipbench.train.artifacts import (
    WEIGHTS_FORMAT,
    ModelMetadata,
    build_from_metadata,
    check_state_dict,
    read_safetensors,
    save_weights,
)

__all__ = ["evaluate_external"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _plain_model(path: Path, profile: Profile, key: RunKey) -> tuple[nn.Module, ModelMetadata]:
    """The exported plain model held by ``path``, checked against the model variant's architecture."""
    metadata, tensors = read_safetensors(path)
    config = config_from_profile(profile, key)
    if metadata.get("format") == WEIGHTS_FORMAT:
        check_weights_match(path, ModelMetadata.from_strings(metadata, str(path)), config, f"{key.dataset}/{key.model}")
    if any(name.startswith("exported.") for name in tensors):
        tensors = {name.removeprefix("exported."): value for name, value in tensors.items() if name.startswith("exported.")}
    expected = ModelMetadata.of(config)
    plain = export(build_from_metadata(expected))
    check_state_dict(
        plain, tensors, f"{path}: does not match {config.method}'s {config.architecture} architecture for {key.dataset}"
    )
    plain.load_state_dict(tensors)
    return plain, expected


def _description(metadata: ModelMetadata) -> ModelDescription:
    method = get_method(metadata.method)
    return ModelDescription(
        metadata.method, method.paper_name, method.kit, method.constrained, metadata.architecture, Reference(**method.reference)
    )


def evaluate_external(
    profile: Profile,
    dataset: str,
    model: str,
    weights: Path,
    name: str,
    progress: bool = True,
    reported: float | None = None,
) -> dict[str, Any]:
    """Certify, attack and verify ``weights`` (a ``model`` variant of the profile); write and
    return its leaderboard entry (``reported``: the clean accuracy its authors claim).

    Raises :class:`VerificationFailed` after writing the (flagged) entry if the gate fails.
    """
    if reported is not None and not 0 <= reported <= 1:
        raise ValueError(f"--reported {reported!r}: give the claimed clean accuracy as a fraction in [0, 1]")
    if not _NAME.match(name):
        raise ValueError(f"--name {name!r}: use letters, digits, '_', '-' or '.', at most 64 characters")
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"weights file {weights} does not exist")
    settings = evaluation_settings(profile, dataset)
    key = RunKey(dataset, model, profile.seeds[0], external=name)
    plain, metadata = _plain_model(weights, profile, RunKey(dataset, model, profile.seeds[0]))
    layout = Layout.of(profile)
    save_weights(layout.weights(key), plain, metadata)
    summaries = {
        stage: evaluate_one(str(profile.path), stage, key, fingerprint(profile, stage, key, settings), progress)
        for stage in ("certify", "attack", "verify")
    }
    entry = build_entry(
        profile.name, _description(metadata), summaries["certify"], summaries["attack"], summaries["verify"], reported=reported
    )
    write_json_atomic(layout.external_entries() / f"{dataset}-{name}.json", entry)
    if not summaries["verify"].verified:
        raise VerificationFailed("\n".join(summaries["verify"].failures))
    return entry
