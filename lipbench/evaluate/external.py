"""Evaluate an externally trained checkpoint through the same certify, attack and verify
code as the pipeline's own models, and add it to the profile's leaderboard.

The checkpoint must be a safetensors file (pickles are refused and never opened as
pickles): either a lipbench weights file, or a plain state dict of the exported
architecture of ``--method`` on ``--dataset`` (keys as in ``export(model).state_dict()``,
optionally prefixed ``exported.``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from lipbench.evaluate.layout import ModelRun
from lipbench.evaluate.run import VerificationFailed, check_weights_match, evaluate_one, fingerprint
from lipbench.evaluate.settings import evaluation_settings
from lipbench.io import write_json_atomic
from lipbench.nn import export
from lipbench.profiles import Profile
from lipbench.report.leaderboard import build_entry, external_entries_dir
from lipbench.train import config_from_profile
from lipbench.train.artifacts import (
    WEIGHTS_FORMAT,
    ModelMetadata,
    build_from_metadata,
    check_state_dict,
    read_safetensors,
    save_plain_weights,
)

__all__ = ["evaluate_external"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _plain_model(path: Path, profile: Profile, dataset: str, method: str) -> tuple[nn.Module, ModelMetadata]:
    """The exported plain model held by ``path``, checked against the method's architecture for the dataset."""
    metadata, tensors = read_safetensors(path)
    config = config_from_profile(profile, dataset, method, profile.seeds[0])
    if metadata.get("format") == WEIGHTS_FORMAT:
        check_weights_match(path, ModelMetadata.from_strings(metadata, str(path)), config, f"{dataset}/{method}")
    if any(key.startswith("exported.") for key in tensors):
        tensors = {key.removeprefix("exported."): value for key, value in tensors.items() if key.startswith("exported.")}
    expected = ModelMetadata(
        dataset,
        method,
        config.method,
        config.architecture,
        config.input_shape,
        config.num_classes,
        config.method_params,
        config.recipe.conv_correction,
    )
    plain = export(build_from_metadata(expected))
    check_state_dict(plain, tensors, f"{path}: does not match {config.method}'s {config.architecture} architecture for {dataset}")
    plain.load_state_dict(tensors)
    return plain, expected


def evaluate_external(
    profile: Profile, dataset: str, method: str, weights: Path, name: str, progress: bool = True
) -> dict[str, Any]:
    """Certify, attack and verify ``weights``; write and return its leaderboard entry.

    Raises :class:`VerificationFailed` after writing the (flagged) entry if the gate fails.
    """
    if not _NAME.match(name):
        raise ValueError(f"--name {name!r}: use letters, digits, '_', '-' or '.', at most 64 characters")
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"weights file {weights} does not exist")
    settings = evaluation_settings(profile, dataset)
    plain, metadata = _plain_model(weights, profile, dataset, method)
    stored = profile.path_of("data") / "external" / dataset / name / "weights.safetensors"
    save_plain_weights(stored, plain, metadata)
    run = ModelRun(dataset, method, profile.seeds[0], stored, external=name)
    summaries = {}
    for stage in ("certify", "attack", "verify"):
        summaries[stage] = evaluate_one(str(profile.path), stage, run, fingerprint(profile, stage, run, settings))
    entry = build_entry(
        profile.name,
        dataset,
        name,
        profile.seeds[0],
        metadata.method,
        metadata.architecture,
        settings.headline_eps,
        None,
        summaries["certify"],
        summaries["attack"],
        summaries["verify"],
        external=True,
    )
    write_json_atomic(external_entries_dir(profile) / f"{dataset}-{name}.json", entry)
    if summaries["verify"]["status"] != "verified":
        raise VerificationFailed("\n".join(summaries["verify"]["failures"]))
    return entry
