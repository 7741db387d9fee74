"""The explain stage: how faithful, stable and concise a model's saliency map is, and how well
it points to the model's nearest adversarial examples (Serrurier, Mamalet, Fel, Béthune,
Boissin, "On the explainable properties of 1-Lipschitz neural networks: an optimal transport
perspective", NeurIPS 2023).

Each model of a dataset is explained on the first ``explain.<dataset>.points`` test points
(the certify stage's points, in order), with every random draw from one generator seeded by
``explain.<dataset>.seed``: reruns give the same numbers. It reads the certify stage's radii and
the attack stage's minimal adversarial examples. Per point (:class:`ExplainArrays`): the class
margin ``m`` and its gradient's norm, the saliency map, deletion and insertion curves,
µ-fidelity, max-sensitivity, complexity, sparseness, the counterfactual's ``t`` and distance,
the certified radius and the minimal adversarial norm; per minimal attack, the cosine between
``-∇m`` and ``x_adv - x`` on the attack's example points. The summary
(:class:`lipbench.summaries.ExplainSummary`) holds their means over points (medians for the
counterfactual distance ratios), ``None`` where no point defines a value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lipbench.arrays import AttackArrays, CertifyArrays
from lipbench.data.base import sha256_file
from lipbench.devices import resolve_device
from lipbench.environment import environment_record, source_fingerprint
from lipbench.evaluate.model_stages import load_model_and_points
from lipbench.evaluate.run import model_keys
from lipbench.evaluate.settings import evaluation_settings
from lipbench.explain.alignment import (
    adversarial_alignment,
    counterfactual_checks,
    flipped_at,
    gradient_counterfactuals,
    rounding_slack,
)
from lipbench.explain.faithfulness import curve_area, deletion_curves, mu_fidelity
from lipbench.explain.saliency import margin_and_gradient, saliency_map
from lipbench.explain.settings import ExplainSettings, explain_settings
from lipbench.explain.stability import complexity, max_sensitivity, sparseness
from lipbench.io import atomic_path
from lipbench.profiles import Profile
from lipbench.runs import Layout, RunKey
from lipbench.summaries import ExplainSummary, StageMetrics

__all__ = [
    "STAGE",
    "ExplainArrays",
    "ExplainOutputs",
    "explain_points",
    "explain_model",
    "summarise",
    "upstream_arrays",
    "explain_one",
    "explain_dataset",
]

#: The stage's name in the layout (``Layout.stage_dir("explain", key)``, ``<metrics>/explain/<dataset>.json``).
STAGE = "explain"
_CHUNK = 16  # points explained at once (bounds the memory of the perturbed batches)
_PER_POINT = (
    "margin",
    "gradient_norm",
    "deletion_auc",
    "insertion_auc",
    "mu_fidelity",
    "max_sensitivity",
    "complexity",
    "sparseness",
    "counterfactual_t",
    "counterfactual_distance",
    "counterfactual_flipped_past_boundary",
)


@dataclass
class ExplainArrays:
    """Per explained point (``N``): see the module docstring. ``saliency`` ``(N, P)``,
    ``deletion_curve`` / ``insertion_curve`` ``(N, steps + 1)``, ``alignment[attack]`` ``(k,)``
    on the attack's ``example_indices`` (NaN where the attack found no example)."""

    margin: np.ndarray
    gradient_norm: np.ndarray
    saliency: np.ndarray
    deletion_curve: np.ndarray
    insertion_curve: np.ndarray
    deletion_auc: np.ndarray
    insertion_auc: np.ndarray
    mu_fidelity: np.ndarray
    max_sensitivity: np.ndarray
    complexity: np.ndarray
    sparseness: np.ndarray
    counterfactual_t: np.ndarray
    counterfactual_distance: np.ndarray
    counterfactual_flipped_past_boundary: np.ndarray
    certified_radius: np.ndarray
    counterfactual_slack: np.ndarray
    min_adversarial_norm: np.ndarray
    alignment: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        """``explain.npz``, written atomically (read with ``np.load``, no pickles)."""
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "alignment"}
        arrays |= {f"alignment_{name}": values for name, values in self.alignment.items()}
        arrays["alignment_attacks"] = np.asarray(list(self.alignment), dtype=str)
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> ExplainArrays:
        with np.load(path, allow_pickle=False) as stored:
            values = {f.name: stored[f.name] for f in dataclasses.fields(cls) if f.name != "alignment"}
            values["alignment"] = {str(name): stored[f"alignment_{name}"] for name in stored["alignment_attacks"]}
        return cls(**values)


def _explain_chunk(model: nn.Module, x: Tensor, settings: ExplainSettings, generator: torch.Generator) -> dict[str, Tensor]:
    """Every per-point metric of ``x`` (one chunk of points)."""
    batch = settings.batch_size
    margin, gradient, classes = margin_and_gradient(model, x, batch_size=batch)
    saliency = saliency_map(gradient)
    deletion = deletion_curves(model, x, classes, saliency, settings.baseline, settings.deletion_steps, False, batch)
    insertion = deletion_curves(model, x, classes, saliency, settings.baseline, settings.deletion_steps, True, batch)
    size = settings.subset_size(saliency.shape[1])
    fidelity = mu_fidelity(model, x, classes, gradient, settings.baseline, size, settings.fidelity_subsets, generator, batch)
    radius, samples = settings.sensitivity_radius, settings.sensitivity_samples
    sensitivity = max_sensitivity(model, x, classes, gradient, radius, samples, generator, batch)
    counterfactual = gradient_counterfactuals(
        model, x, classes, margin, gradient, settings.counterfactual_grid, bisection_steps=settings.counterfactual_bisections
    )
    return {
        "margin": margin,
        "gradient_norm": gradient.reshape(len(x), -1).norm(dim=1),
        "saliency": saliency,
        "deletion_curve": deletion,
        "insertion_curve": insertion,
        "deletion_auc": curve_area(deletion),
        "insertion_auc": curve_area(insertion),
        "mu_fidelity": fidelity,
        "max_sensitivity": sensitivity,
        "complexity": complexity(saliency),
        "sparseness": sparseness(saliency),
        "counterfactual_t": counterfactual.t,
        "counterfactual_distance": counterfactual.distance,
        "counterfactual_flipped_past_boundary": flipped_at(
            model, x, classes, margin, gradient, 1.0 + settings.counterfactual_delta, batch
        ),
    }


def explain_points(model: nn.Module, x: Tensor, settings: ExplainSettings) -> dict[str, np.ndarray]:
    """Every per-point metric of ``x`` (numpy, float64), in chunks of points, all random draws
    from one generator seeded with ``settings.seed``."""
    generator = torch.Generator().manual_seed(settings.seed)
    chunks = [_explain_chunk(model, chunk, settings, generator) for chunk in x.split(_CHUNK)]
    return {name: torch.cat([c[name] for c in chunks]).detach().cpu().double().numpy() for name in chunks[0]}


def _alignment(model: nn.Module, x: Tensor, attacks: AttackArrays, batch_size: int) -> dict[str, np.ndarray]:
    """Per minimal attack: ``cos(-∇m(x), x_adv - x)`` on its example points (NaN: no example)."""
    indices = torch.as_tensor(attacks.example_indices, dtype=torch.long)
    if not len(indices):
        return {name: np.zeros(0) for name in attacks.min_norms}
    points = x[indices.to(x.device)]
    _, gradient, _ = margin_and_gradient(model, points, batch_size=batch_size)
    cosines = {}
    for name in attacks.min_norms:
        x_adv = torch.as_tensor(attacks.examples[name], dtype=x.dtype, device=x.device)
        cosines[name] = adversarial_alignment(gradient, points, x_adv).double().cpu().numpy()
    return cosines


def _min_adversarial_norms(attacks: AttackArrays, count: int) -> np.ndarray:
    """``(count,)``: the smallest minimal-attack norm per point (NaN past the attack's points,
    where it found none, and on misclassified points, whose recorded norm is 0)."""
    norms = np.full(count, np.nan)
    if attacks.min_norms:
        smallest = np.min(np.stack(list(attacks.min_norms.values())), axis=0)[:count].astype(np.float64)
        norms[: len(smallest)] = np.where(np.isfinite(smallest) & (smallest > 0), smallest, np.nan)
    return norms


def explain_model(
    model: nn.Module, x: Tensor, settings: ExplainSettings, certificates: CertifyArrays, attacks: AttackArrays
) -> ExplainArrays:
    """Explain ``model`` on ``x[:settings.points]`` (``x``: the certify stage's points, with
    their ``certificates``; the attack stage's ``attacks`` ran on a prefix of them)."""
    count = min(settings.points, len(x))
    values = explain_points(model, x[:count], settings)
    return ExplainArrays(
        **values,
        certified_radius=np.asarray(certificates.radius[:count], dtype=np.float64),
        counterfactual_slack=rounding_slack(certificates.logits[:count], values["gradient_norm"]),
        min_adversarial_norm=_min_adversarial_norms(attacks, count),
        alignment=_alignment(model, x, attacks, settings.batch_size),
    )


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


def _median(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if len(finite) else None


def _smallest(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.min()) if len(finite) else None


def summarise(key: RunKey, fingerprint: str, settings: ExplainSettings, arrays: ExplainArrays, binary: bool) -> ExplainSummary:
    """The summary of one model's arrays (means over points; see the module docstring)."""
    distance, radius = arrays.counterfactual_distance, arrays.certified_radius
    flipped = np.isfinite(distance)
    with np.errstate(divide="ignore", invalid="ignore"):
        over_radius = np.where(flipped & (radius > 0), distance / radius, np.nan)
        over_adversarial = np.where(flipped, distance / arrays.min_adversarial_norm, np.nan)
    return ExplainSummary(
        dataset=key.dataset,
        model=key.model,
        seed=key.seed,
        external=key.external,
        fingerprint=fingerprint,
        points=len(arrays.margin),
        margin="binary_logit" if binary else "top_minus_runner_up",
        settings=settings.as_dict(),
        fidelity_subset_size=settings.subset_size(arrays.saliency.shape[1]),
        gradient_norm=_mean(arrays.gradient_norm),
        deletion_auc=_mean(arrays.deletion_auc),
        insertion_auc=_mean(arrays.insertion_auc),
        mu_fidelity=_mean(arrays.mu_fidelity),
        max_sensitivity=_mean(arrays.max_sensitivity),
        complexity=_mean(arrays.complexity),
        sparseness=_mean(arrays.sparseness),
        alignment={name: _mean(values) for name, values in arrays.alignment.items()},
        alignment_points={name: int(np.isfinite(values).sum()) for name, values in arrays.alignment.items()},
        counterfactual_flipped=int(flipped.sum()),
        counterfactual_median_distance=_median(np.where(flipped, distance, np.nan)),
        counterfactual_over_radius=_median(over_radius),
        counterfactual_over_min_adversarial=_median(over_adversarial),
        counterfactual_min_distance_minus_radius=_smallest(np.where(flipped, distance - radius, np.nan)),
        counterfactual_violations=counterfactual_checks(distance, radius, arrays.counterfactual_slack).tolist(),
    )


def upstream_arrays(profile: Profile, key: RunKey) -> tuple[CertifyArrays, AttackArrays, list[Path]]:
    """The certify and attack stages' arrays of ``key`` (and their paths); a missing one is a
    FileNotFoundError naming the file and the command that writes it."""
    layout = Layout.of(profile)
    paths = [layout.stage_arrays(stage, key) for stage in ("certify", "attack")]
    for stage, path in zip(("certify", "attack"), paths):
        if not path.is_file():
            raise FileNotFoundError(
                f"{key.label}: {path} does not exist; the explain stage reads the {stage} stage's outputs: run "
                f"'lipbench {stage} --params {profile.path} --dataset {key.dataset}' (or dvc repro) first"
            )
    return CertifyArrays.load(paths[0]), AttackArrays.load(paths[1]), paths


def _fingerprint(weights: Path, upstream: list[Path], settings: ExplainSettings) -> str:
    """Identifies a model's explain inputs: weights, certify and attack arrays, settings, lipbench's source."""
    inputs = [sha256_file(path)[:16] for path in (weights, *upstream)]
    payload = json.dumps([STAGE, inputs, settings.as_dict(), source_fingerprint()], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def explain_one(profile: Profile, key: RunKey) -> tuple[ExplainSummary, ExplainArrays]:
    """Explain one model of the profile (after its certify and attack stages)."""
    started = time.perf_counter()
    settings = explain_settings(profile, key.dataset)
    certificates, attacks, upstream = upstream_arrays(profile, key)
    evaluation = evaluation_settings(profile, key.dataset)
    model, x, _, _ = load_model_and_points(profile, key, evaluation)
    model.eval()
    arrays = explain_model(model, x, settings, certificates, attacks)
    binary = certificates.logits.ndim == 1 or certificates.logits.shape[1] == 1
    run_fingerprint = _fingerprint(Layout.of(profile).weights(key), upstream, settings)
    summary = summarise(key, run_fingerprint, settings, arrays, binary)
    environment = environment_record(resolve_device(evaluation.device), key.seed)
    summary = dataclasses.replace(summary, seconds=time.perf_counter() - started, environment=environment)
    return summary, arrays


@dataclass
class ExplainOutputs:
    """A dataset's explain stage: every model's summary (``metrics``) and arrays."""

    metrics: StageMetrics
    arrays: dict[RunKey, ExplainArrays]


def explain_dataset(profile: Profile, dataset: str) -> ExplainOutputs:
    """Explain every trained model of ``dataset`` in the profile (models x seeds, in profile
    order); checks the settings and every model's upstream outputs before any work."""
    started = time.perf_counter()
    explain_settings(profile, dataset)  # unknown dataset or bad settings: ProfileError
    keys = model_keys(profile, dataset)
    for key in keys:
        upstream_arrays(profile, key)
    summaries, arrays = {}, {}
    for key in keys:
        summaries[key], arrays[key] = explain_one(profile, key)
    metrics = StageMetrics(profile.name, STAGE, dataset, summaries, [key.label for key in keys], time.perf_counter() - started)
    return ExplainOutputs(metrics, arrays)
