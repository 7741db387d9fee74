"""One model's certify, attack and verify work: read its inputs, compute, write its arrays,
return its typed summary (:mod:`lipbench.summaries`).

Everything is measured on the exported plain model loaded from the weights file, on the
first ``certify_points`` test points (the attack stage on the first ``attack_points`` of
them, its DeepFool curve on the first ``deepfool_points``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lipbench.arrays import AttackArrays, CertifyArrays
from lipbench.data import DatasetInfo, load_dataset, take_tensors
from lipbench.data.base import MANIFEST_NAME, prepared_dir
from lipbench.devices import resolve_device
from lipbench.evaluate.attacks import SuiteResult, run_attack_suite
from lipbench.evaluate.certification import certify_model
from lipbench.evaluate.settings import EvaluationSettings
from lipbench.evaluate.verification import verify_model
from lipbench.nn import LipschitzUpperBound
from lipbench.profiles import Profile
from lipbench.runs import Layout, RunKey
from lipbench.summaries import AttackSummary, CertifySummary, DeepFoolCurve, VerifySummary, read_summary
from lipbench.train import ModelMetadata, TrainConfig, config_from_profile, load_weights

__all__ = ["STAGE_WORK", "GivenModel", "check_weights_match", "evaluation_points", "load_model_and_points"]


@dataclasses.dataclass(frozen=True)
class GivenModel:
    """A model handed to the stages instead of a weights file (a foreign model) and its strict bound, which the
    certify stage's own bound must reproduce."""

    model: nn.Module
    upper: LipschitzUpperBound


def check_weights_match(path: Path, metadata: ModelMetadata, config: TrainConfig, label: str) -> None:
    """``ValueError`` unless the weights file holds the dataset, method and architecture of ``config``."""
    if (metadata.dataset, metadata.method, metadata.architecture) != (config.dataset, config.method, config.architecture):
        raise ValueError(
            f"{path}: holds a {metadata.method} {metadata.architecture} model for {metadata.dataset}, but {label} "
            f"is a {config.method} {config.architecture} model; pass the matching weights file"
        )


@functools.lru_cache(maxsize=2)
def _cached_test_points(data_dir: Path, dataset: str, prepare_params: str, count: int, manifest_stamp: tuple[int, int]):
    splits = load_dataset(dataset, data_dir, json.loads(prepare_params))
    x, y = take_tensors(splits.test, count)
    return x, y, splits.info


def evaluation_points(profile: Profile, dataset: str, count: int) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """The first ``count`` test points and the dataset info, read once per process: every model
    of a stage (and every stage of ``lipbench evaluate``) uses the same points. The cache key
    includes the prepared data's manifest, so re-prepared data is read again."""
    data_dir = profile.path_of("data")
    manifest = prepared_dir(data_dir, dataset) / MANIFEST_NAME
    if not manifest.is_file():  # not prepared: let the loader raise its error
        load_dataset(dataset, data_dir, profile.prepare_params(dataset))
    status = manifest.stat()
    params = json.dumps(profile.prepare_params(dataset), sort_keys=True)
    return _cached_test_points(data_dir, dataset, params, count, (status.st_ino, status.st_mtime_ns))


def load_model_and_points(
    profile: Profile, key: RunKey, settings: EvaluationSettings, given: GivenModel | None = None
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, DatasetInfo]:
    """The exported model (checked against the profile's model variant unless external; ``given``'s model
    when given) and the first ``certify_points`` test points, on the evaluation device."""
    device = resolve_device(settings.device)
    weights = Layout.of(profile).weights(key)
    model, metadata = (given.model.to(device).eval(), None) if given else load_weights(weights, device)
    if key.external is None and metadata is not None:
        check_weights_match(weights, metadata, config_from_profile(profile, key), f"the profile's {key.label}")
    x, y, info = evaluation_points(profile, key.dataset, settings.certify_points)
    return model, x.to(device), y.to(device), info


def certify(
    profile: Profile, key: RunKey, settings: EvaluationSettings, fingerprint: str, progress: bool, given: GivenModel | None = None
) -> CertifySummary:
    model, x, y, info = load_model_and_points(profile, key, settings, given)
    certification = certify_model(model, info.input_shape, x, y, settings.epsilons, settings.batch_size)
    if given is not None and not np.allclose(certification.upper.per_logit, given.upper.per_logit, rtol=1e-9, atol=0):
        raise ValueError(f"{key.label}: the certified bound {certification.upper.per_logit} is not the given one")
    certification.arrays().save(Layout.of(profile).stage_arrays("certify", key))
    return certification.summary(key, fingerprint, sum(p.numel() for p in model.parameters()))


def _deepfool_curve(model, x, y, radius, settings: EvaluationSettings, common: dict) -> tuple[np.ndarray, DeepFoolCurve] | None:
    """DeepFool on the first ``deepfool_points`` (more than the attack set) for the report's curve."""
    count = settings.deepfool_points
    if "deepfool_l2" not in settings.attacks or count <= settings.attack_points:
        return None
    options = {k: v for k, v in settings.attack_options.items() if k == "deepfool_l2"}
    curve = run_attack_suite(
        model, x[:count], y[:count], settings.epsilons, ["deepfool_l2"], radius[:count], options=options, **common
    )
    summary = DeepFoolCurve(count, curve.robust_accuracy.tolist(), curve.certified_accuracy.tolist())
    return curve.min_norms["deepfool_l2"], summary


def _attack_summary(key: RunKey, fingerprint: str, settings: EvaluationSettings, suite: SuiteResult, curve) -> AttackSummary:
    record = suite.summary()
    eps_attacks = [name for name in suite.attacks if name in suite.calls_by_eps]
    ratio = None
    if eps_attacks:
        pruned = np.sum([suite.calls_by_eps[name] for name in eps_attacks], axis=0)
        ratio = (pruned / (suite.n_points * len(eps_attacks))).tolist()
    return AttackSummary(
        **{name: record[name] for name in _SUITE_FIELDS},
        dataset=key.dataset,
        model=key.model,
        seed=key.seed,
        external=key.external,
        fingerprint=fingerprint,
        headline_eps=settings.headline_eps,
        per_attack_robust_accuracy={name: acc.tolist() for name, acc in suite.per_attack_robust_accuracy.items()},
        attack_seconds=record["seconds"],
        deepfool_curve=None if curve is None else curve[1],
        pruned_call_ratio=ratio,
    )


_SUITE_FIELDS = (
    "epsilons",
    "attacks",
    "n_points",
    "clean_accuracy",
    "robust_accuracy",
    "certified_accuracy",
    "attack_success_rate",
    "calls",
    "calls_unpruned",
    "calls_saved",
    "calls_by_eps",
    "calls_saved_by_certificates",
    "calls_saved_by_smaller_eps",
    "certificate_violations",
    "pruned",
    "precision",
    "compiled",
    "info",
)


def attack(
    profile: Profile, key: RunKey, settings: EvaluationSettings, fingerprint: str, progress: bool, given: GivenModel | None = None
) -> AttackSummary:
    model, x, y, info = load_model_and_points(profile, key, settings, given)
    layout = Layout.of(profile)
    radius = torch.from_numpy(CertifyArrays.load(layout.stage_arrays("certify", key)).radius)
    n = settings.attack_points
    common: dict[str, Any] = dict(
        batch_size=settings.batch_size,
        progress=progress,
        bounds=info.bounds,
        n_examples=16,
        precision=settings.attack_precision,
        compile_model=settings.attack_compile,
    )
    suite = run_attack_suite(
        model,
        x[:n],
        y[:n],
        settings.epsilons,
        settings.attacks,
        radius[:n],
        options=settings.attack_options,
        prune=True,
        **common,
    )
    curve = _deepfool_curve(model, x, y, radius, settings, common)
    AttackArrays(
        epsilons=np.asarray(settings.epsilons),
        robust=suite.robust,
        clean_correct=suite.clean_correct,
        example_indices=suite.example_indices,
        attacks=list(suite.attacks),
        success=suite.success,
        examples=suite.examples,
        min_norms=suite.min_norms,
        deepfool_curve_min_norm=None if curve is None else curve[0],
    ).save(layout.stage_arrays("attack", key))
    return _attack_summary(key, fingerprint, settings, suite, curve)


def verify(
    profile: Profile, key: RunKey, settings: EvaluationSettings, fingerprint: str, progress: bool, given: GivenModel | None = None
) -> VerifySummary:
    model, x, _, info = load_model_and_points(profile, key, settings, given)
    layout = Layout.of(profile)
    certificates = CertifyArrays.load(layout.stage_arrays("certify", key))
    upper = read_summary(layout.stage_summary("certify", key), CertifySummary).lipschitz_upper_bound
    attacks = AttackArrays.load(layout.stage_arrays("attack", key))
    attack_summary = read_summary(layout.stage_summary("attack", key), AttackSummary)
    label = f"{profile.name}:{key.label}"
    result = verify_model(label, model, x, certificates, upper, attacks, attack_summary, info.bounds, settings.verify)
    return result.summary(key, fingerprint)


#: stage -> work(profile, key, settings, fingerprint, progress[, given]) returning the model's summary;
#: ``progress``: progress bars of the model's attacks (on a terminal); ``given``: a :class:`GivenModel`.
STAGE_WORK: dict[str, Callable[..., Any]] = {
    "certify": certify,
    "attack": attack,
    "verify": verify,
}
