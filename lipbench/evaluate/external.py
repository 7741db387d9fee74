"""Evaluate an externally trained model through the same certify, attack and verify
code as the pipeline's own models, and add it to the profile's leaderboard.

:func:`evaluate_external`: a lipbench weights file (written by ``lipbench train``; pickles are
refused and never opened as pickles) of the profile's variant on ``--dataset``. Its recorded
method and architecture must be the variant's. A plain state dict is refused: tensor names and
shapes do not say which activations, pooling or normalisation produced them (a deel-torchlip
GroupSort2 MLP has the shapes of lipbench's FullSort one); such a model comes as ONNX or as a
plug-in architecture with its card.

:func:`evaluate_foreign`: a model built elsewhere, an ONNX file or a plug-in architecture's
weights (:mod:`lipbench.evaluate.plugins`) and its model card (:mod:`lipbench.evaluate.foreign`,
:mod:`lipbench.evaluate.model_card`). A model at chance level on the certify points is refused
for publication (both functions); one far below its card's claimed clean accuracy is flagged.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipbench.entries import build_entry, validate_entry
from lipbench.environment import source_fingerprint
from lipbench.evaluate.foreign import ForeignModel, load_foreign
from lipbench.evaluate.model_card import ModelCard, default_card_path, load_model_card
from lipbench.evaluate.model_stages import GivenModel, check_weights_match, evaluation_points
from lipbench.evaluate.plugins import load_plugin
from lipbench.evaluate.run import VerificationFailed, evaluate_one, fingerprint
from lipbench.evaluate.settings import EvaluationSettings, evaluation_settings
from lipbench.io import write_json_atomic
from lipbench.methods import get_method
from lipbench.nn import export
from lipbench.nn.certificates import predictions
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

__all__ = ["evaluate_external", "evaluate_foreign", "chance_threshold", "claim_gap_limit"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _plain_model(path: Path, profile: Profile, key: RunKey) -> tuple[nn.Module, ModelMetadata]:
    """The exported plain model held by ``path``, checked against the model variant's architecture."""
    metadata, tensors = read_safetensors(path)
    config = config_from_profile(profile, key)
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise ValueError(
            f"{path}: a plain state dict without lipbench's architecture record (safetensors metadata format "
            f"{WEIGHTS_FORMAT!r}, written by `lipbench train`). Tensor shapes do not say which activations, pooling "
            f"or normalisation made them, so lipbench will not guess that it is {key.model}'s {config.architecture}. "
            "Evaluate a model trained elsewhere as ONNX (--model FILE.onnx --card CARD.yaml) or through its own "
            "constructor (--architecture NAME --weights FILE.safetensors --card CARD.yaml; "
            "examples/lipbench_example_architecture)"
        )
    check_weights_match(path, ModelMetadata.from_strings(metadata, str(path)), config, f"{key.dataset}/{key.model}")
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
    x, y, info = evaluation_points(profile, dataset, settings.certify_points)
    _check_not_chance(plain, x, y, info.num_classes, settings.batch_size, str(weights))
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


def chance_threshold(num_classes: int, points: int) -> float:
    """Clean accuracy at or below which a model is at chance level: ``1/K`` plus 3 binomial standard deviations
    of the accuracy of a random guesser on ``points`` points (a guesser passes it with probability ~0.1%)."""
    p = 1.0 / num_classes
    return p + 3.0 * math.sqrt(p * (1.0 - p) / points)


def claim_gap_limit(claimed: float, points: int) -> float:
    """How far below a claimed clean accuracy a measurement may fall before it is flagged: 3 binomial standard
    deviations on ``points`` points, and at least 5 points of accuracy (the test sets may differ)."""
    return max(0.05, 3.0 * math.sqrt(claimed * (1.0 - claimed) / points))


def _check_not_chance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int, batch: int, what: str) -> float:
    """``ValueError`` when ``model``'s clean accuracy on ``x`` is at chance level (never published)."""
    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in x.split(batch)])
    accuracy = float((predictions(logits) == y).double().mean())
    limit = chance_threshold(classes, len(y))
    if accuracy <= limit:
        raise ValueError(
            f"{what}: clean accuracy {accuracy:.3f} on the first {len(y)} test points is at chance level "
            f"(<= 1/{classes} + 3 binomial sigma = {limit:.3f}): refused for publication. Check the class order, "
            "input range, normalisation and architecture against the model's training"
        )
    return accuracy


def _foreign_fingerprint(stage: str, foreign: ForeignModel, card: ModelCard, settings: EvaluationSettings) -> str:
    payload = json.dumps([stage, foreign.sha256, foreign.source, card.as_dict(), settings.for_stage(stage), source_fingerprint()])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _foreign_entry(profile: Profile, card: ModelCard, foreign: ForeignModel, summaries: dict[str, Any]) -> dict[str, Any]:
    """The leaderboard entry, with the file's sha256, the card, the input space and any flag."""
    factor = 1.0 if card.std is None else 1.0 / min(card.std)  # the normalisation's own Lipschitz factor
    kind = "plugin" if foreign.source.startswith("plug-in") else "onnx"
    constrained = foreign.upper.max_per_logit <= 1.01 * factor  # 1-Lipschitz logits up to the normalisation
    description = ModelDescription(
        "foreign", card.architecture or foreign.source, kind, constrained, card.architecture or foreign.source,
        Reference(link=card.paper, authors=card.authors),
    )  # fmt: skip
    certify = summaries["certify"]
    entry = build_entry(
        profile.name, description, certify, summaries["attack"], summaries["verify"], reported=card.claimed_clean_accuracy
    )
    flags = []
    claimed = card.claimed_clean_accuracy
    if claimed is not None and claimed - certify.clean_accuracy > claim_gap_limit(claimed, certify.points):
        flags.append(
            f"clean accuracy {certify.clean_accuracy:.3f} on {certify.points} test points is far below the card's "
            f"claimed {claimed:.3f}"
        )
    space = "the dataset's prepared input space"
    if card.mean is not None:
        space += f" (the card's normalisation is part of the model: bound factor 1/min(std) = {1 / min(card.std):.4g})"
    entry |= {"model_sha256": foreign.sha256, "model_card": card.as_dict(), "input_space": space, "flags": flags}
    entry["footnote"] = "; ".join(filter(None, [entry["footnote"], foreign.source, *flags]))
    validate_entry(entry)
    return entry


def evaluate_foreign(
    profile: Profile,
    dataset: str,
    model_path: Path,
    card_path: Path | None,
    name: str | None = None,
    progress: bool = True,
    architecture: str | None = None,
) -> dict[str, Any]:
    """Check, convert, bound, certify, attack and verify the ONNX model at ``model_path`` (or, with
    ``architecture``, the plug-in architecture of that name with the weights at ``model_path``) described by
    its card (``card_path``, default: next to the model); write and return its leaderboard entry.

    Every check runs before the stages; nothing is written when one fails. Raises :class:`VerificationFailed`
    after writing the (flagged) entry if the gate fails."""
    model_path = Path(model_path)
    name = name or model_path.stem
    if not _NAME.match(name):
        raise ValueError(f"--name {name!r}: use letters, digits, '_', '-' or '.', at most 64 characters")
    settings = evaluation_settings(profile, dataset)
    if not model_path.is_file():
        raise FileNotFoundError(f"model file {model_path} does not exist")
    card = load_model_card(card_path or default_card_path(model_path))
    x, y, info = evaluation_points(profile, dataset, settings.certify_points)
    if architecture is None:
        foreign = load_foreign(model_path, card, info, dataset)
    else:
        foreign = load_plugin(architecture, model_path, card, info, dataset)
    _check_not_chance(foreign.model, x, y, card.num_classes, settings.batch_size, f"{model_path} ({card.path})")
    key = RunKey(dataset, "foreign", profile.seeds[0], external=name)
    layout, given = Layout.of(profile), GivenModel(foreign.model, foreign.upper)
    try:
        summaries = {
            stage: evaluate_one(
                str(profile.path), stage, key, _foreign_fingerprint(stage, foreign, card, settings), progress, given
            )
            for stage in ("certify", "attack", "verify")
        }
        entry = _foreign_entry(profile, card, foreign, summaries)
    except BaseException:
        for stage in ("certify", "attack", "verify"):  # no half-written outputs
            shutil.rmtree(layout.stage_dir(stage, key), ignore_errors=True)
        raise
    write_json_atomic(layout.external_entries() / f"{dataset}-{name}.json", entry)
    if not summaries["verify"].verified:
        raise VerificationFailed("\n".join(summaries["verify"].failures))
    return entry
