"""Small synthetic pipeline outputs in the exact formats of the train, certify, attack and
verify stages (written through lipbench's own schema classes), for a two-dataset (moons,
digits), three-model (standard, hkr, kr) profile. The numbers are random but consistent:
every summary is computed from its per-point arrays, so certified <= robust <= clean holds
on the attack points, as in a real run."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import yaml

from lipbench.arrays import AttackArrays, CertifyArrays
from lipbench.curves import certified_accuracy_curve
from lipbench.data import load_dataset, take_tensors
from lipbench.io import write_json_atomic
from lipbench.methods import get_method
from lipbench.runs import MODEL_STAGES, Layout, RunKey
from lipbench.summaries import (
    AttackSummary,
    CertifySummary,
    ExplainSummary,
    LowerBoundRecord,
    Reference,
    StageMetrics,
    TrainSummary,
    TrainTiming,
    UpperBoundRecord,
    VerifySummary,
    write_summary,
)

ATTACKS = ["fgm", "pgd_l2", "cw_l2", "deepfool_l2", "autoattack_l2"]
EPS_ATTACKS = ["fgm", "pgd_l2", "autoattack_l2"]
MODELS = ["standard", "hkr", "kr"]
PREPARE = {
    "moons": {"n_samples": 400, "noise": 0.1, "seed": 0, "test_fraction": 0.25},
    "digits": {"seed": 0, "test_fraction": 0.25},
}
EPSILONS = {"moons": [0.05, 0.1], "digits": [0.25, 0.5]}
CERTIFY_POINTS, ATTACK_POINTS, DEEPFOOL_POINTS = 40, 20, 30
ENVIRONMENT = {
    "versions": {"torch": "2.14.1", "numpy": "2.4.6", "lipbench": "0.1.0"},
    "device": "cpu:x86_64 x2 threads",
    "cpu_count": 2,
    "torch_threads": 2,
    "platform": "Linux-test",
    "git_commit": "abc123",
    "seed": 0,
}


RECIPE = {"epochs": 3, "batch_size": 64, "learning_rate": 0.005}
HKR_MARGINS = {"moons": 0.1, "digits": 0.3}


def write_params(root: Path, data_dir: Path, models: list[str] = MODELS) -> Path:
    """A profile params file whose paths all point under ``root`` (data: the shared ``data_dir``)."""
    train = {d: {"recipe": dict(RECIPE), **{m: _method_params(d, m) for m in models}} for d in PREPARE}
    evaluate = {"device": "cpu", "batch_size": 256, "workers": 1}
    for dataset, eps in EPSILONS.items():
        evaluate[dataset] = {
            "epsilons": eps,
            "certify_points": CERTIFY_POINTS,
            "attack_points": ATTACK_POINTS,
            "deepfool_points": DEEPFOOL_POINTS,
            "attacks": ATTACKS,
        }
    params = {
        "profile": "fixture",
        "root": ".",
        "params_file": str(root / "params.yaml"),
        "paths": {
            "data": str(data_dir),
            "models": str(root / "models"),
            "evaluation": str(root / "evaluation"),
            "metrics": str(root / "reports" / "fixture" / "metrics"),
            "reports": str(root / "reports" / "fixture"),
        },
        "datasets": list(PREPARE),
        "models": models,
        "seeds": [0],
        "prepare": {"mirror": "", **PREPARE},
        "train": {"device": "cpu", **train},
        "evaluate": evaluate,
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def _method_params(dataset: str, model: str) -> dict:
    """The fixture profile's parameters of ``model`` (what its training record says it used)."""
    return {"alpha": 50.0, "margin": HKR_MARGINS[dataset]} if model == "hkr" else {}


def _train_summary(key: RunKey, rng: np.random.Generator, test_examples: int) -> TrainSummary:
    method = get_method(key.model)
    return TrainSummary(
        dataset=key.dataset,
        model=key.model,
        seed=key.seed,
        method=key.model,
        paper_name=method.paper_name,
        kit=method.kit,
        constrained=method.constrained,
        architecture=f"{key.dataset}_dense",
        reference=Reference(**method.reference),
        method_params=_method_params(key.dataset, key.model),
        recipe=dict(RECIPE),
        epochs=3,
        train_accuracy=0.95,
        test_accuracy=float(rng.uniform(0.8, 1.0)),
        final_loss=0.3,
        parameter_count=1234,
        train_examples=300,
        test_examples=test_examples,
        timing=TrainTiming([0.1, 0.12, 0.11], 0.33, 1.0),
        peak_memory_mb={"process_rss": 600.0},
        environment=ENVIRONMENT,
    )


def _certify(key: RunKey, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, upper: UpperBoundRecord):
    binary, eps = key.dataset == "moons", EPSILONS[key.dataset]
    logits = rng.normal(size=(len(y), 1 if binary else 10)).astype(np.float32)
    radius, correct = np.abs(rng.normal(0.3, 0.2, len(y))), rng.random(len(y)) < 0.85
    arrays = CertifyArrays(
        radius=radius,
        correct=correct,
        labels=y,
        predictions=np.where(correct, y, (y + 1) % (2 if binary else 10)),
        logits=logits,
        gradients=rng.normal(size=(16, *x.shape[1:])).astype(np.float32),
        epsilons=np.array(eps),
        whole_map_lipschitz=np.float64(upper.whole_map),
        per_logit_lipschitz=np.ones(logits.shape[1]),
        certificate=np.zeros(len(y), dtype=np.int8),
    )
    if binary:
        gx, gy = np.linspace(-1.5, 2.5, 20, dtype=np.float32), np.linspace(-1.0, 1.5, 15, dtype=np.float32)
        arrays.grid_x, arrays.grid_y, arrays.grid_values = gx, gy, (gx[None, :] - gy[:, None])[..., None].astype(np.float32)
    summary = CertifySummary(
        dataset=key.dataset,
        model=key.model,
        seed=key.seed,
        fingerprint="f" * 16,
        points=len(y),
        clean_accuracy=float(correct.mean()),
        epsilons=eps,
        certified_accuracy=certified_accuracy_curve(radius, correct, eps).tolist(),
        median_certified_radius_correct=float(np.median(radius[correct])),
        lipschitz_upper_bound=upper,
        parameter_count=1234,
        certificate_counts={"whole_map": len(y), "per_logit": 0, "pairwise": 0},
        seconds=0.02,
        environment=ENVIRONMENT,
    )
    return arrays, summary


def _attack(key: RunKey, rng: np.random.Generator, x: np.ndarray, certify: CertifyArrays):
    """Random successes that never touch a certified point (a sound certificate)."""
    eps, n = EPSILONS[key.dataset], ATTACK_POINTS
    correct = certify.correct[:n]
    certified = correct[None, :] & (certify.radius[None, :n] > np.array(eps)[:, None])
    success, examples, min_norms = {}, {}, {}
    for name in ATTACKS:
        if name in EPS_ATTACKS:
            success[name] = np.logical_or.accumulate(rng.random((len(eps), n)) < 0.3, axis=0) & correct & ~certified
            examples[name] = (x[None, :16] + 0.05 * rng.normal(size=(len(eps), 16, *x.shape[1:]))).astype(np.float32)
        else:
            norms = np.where(correct, certify.radius[:n] + np.abs(rng.normal(0.1, 0.2, n)), 0.0)
            min_norms[name] = norms
            success[name] = correct & (norms[None, :] <= np.array(eps)[:, None])
            example = (x[:16] + 0.1 * rng.normal(size=(16, *x.shape[1:]))).astype(np.float32)
            example[~correct[:16]] = np.nan
            examples[name] = example
    min_norms["deepfool_l2"][-1] = np.inf
    success["deepfool_l2"][:, -1] = False
    broken = np.any(np.stack(list(success.values())), axis=0)
    robust = correct[None, :] & ~broken
    curve = np.where(certify.correct[:DEEPFOOL_POINTS], certify.radius[:DEEPFOOL_POINTS] + 0.05, 0.0)
    arrays = AttackArrays(np.array(eps), robust, correct, np.arange(16), ATTACKS, success, examples, min_norms, curve)
    summary = AttackSummary(
        dataset=key.dataset,
        model=key.model,
        seed=key.seed,
        fingerprint="a" * 16,
        headline_eps=eps[-1],
        epsilons=eps,
        attacks=ATTACKS,
        n_points=n,
        clean_accuracy=float(correct.mean()),
        robust_accuracy=robust.mean(axis=1).tolist(),
        certified_accuracy=certified.mean(axis=1).tolist(),
        per_attack_robust_accuracy={a: (correct & ~success[a]).mean(axis=1).tolist() for a in ATTACKS},
        attack_success_rate={a: success[a].mean(axis=1).tolist() for a in ATTACKS},
        calls={a: n for a in ATTACKS},
        calls_unpruned={a: n for a in ATTACKS},
        calls_saved=0,
        calls_by_eps={a: [n] * len(eps) for a in EPS_ATTACKS},
        calls_saved_by_certificates={a: 0 for a in EPS_ATTACKS},
        calls_saved_by_smaller_eps={a: 0 for a in EPS_ATTACKS},
        certificate_violations=[0] * len(eps),
        pruned=True,
        precision="fp32",
        compiled=False,
        attack_seconds={a: 0.5 for a in ATTACKS},
        seconds=2.5,
        environment=ENVIRONMENT,
    )
    return arrays, summary


def _verify(key: RunKey, upper: UpperBoundRecord) -> VerifySummary:
    lower = LowerBoundRecord(0.9 * upper.whole_map, [0.9], 0.9 * upper.max_per_logit, 1.2, {})
    return VerifySummary(
        dataset=key.dataset,
        model=key.model,
        seed=key.seed,
        fingerprint="v" * 16,
        label=f"fixture:{key.label}",
        status="verified",
        tolerance=1e-4,
        upper_bound=upper,
        lower_bound=lower,
        layers=[],
        certificate_audit={"points": 0, "steps": 20, "changed": 0},
        minimal_attack_checks={},
        failures=[],
        seconds=0.05,
        environment=ENVIRONMENT,
    )


def _explain(key: RunKey, rng: np.random.Generator, constrained: bool) -> ExplainSummary:
    """Explain-stage figures of the right kind (1-Lipschitz models: counterfactual / radius near 1)."""
    ratio = 1.0 + float(rng.uniform(0.0, 0.3)) if constrained else 3.0
    return ExplainSummary(
        dataset=key.dataset,
        model=key.model,
        seed=key.seed,
        fingerprint="e" * 16,
        points=16,
        margin="binary f" if key.dataset == "moons" else "f_top - f_runner_up",
        settings={"points": 16},
        fidelity_subset_size=3,
        gradient_norm=1.0 if constrained else 5.0,
        deletion_auc=float(rng.uniform(0.0, 0.5)),
        insertion_auc=float(rng.uniform(0.3, 0.9)),
        mu_fidelity=float(rng.uniform(0.2, 0.7)),
        max_sensitivity=float(rng.uniform(0.2, 1.0)),
        complexity=float(rng.uniform(1.0, 3.0)),
        sparseness=float(rng.uniform(0.2, 0.6)),
        alignment={"deepfool_l2": float(rng.uniform(0.6, 0.95)), "cw_l2": None},
        alignment_points={"deepfool_l2": 12, "cw_l2": 0},
        counterfactual_flipped=16,
        counterfactual_median_distance=0.3,
        counterfactual_over_radius=ratio,
        counterfactual_over_min_adversarial=1.0,
        counterfactual_min_distance_minus_radius=0.01,
        counterfactual_violations=[],
        seconds=0.1,
        environment=ENVIRONMENT,
    )


def _explain_arrays(path: Path, rng: np.random.Generator, constrained: bool, points: int = 16) -> None:
    """The per-point arrays the report reads (:func:`lipbench.explain.figures.counterfactual_figures`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gradient_norm = np.full(points, 1.0 if constrained else 5.0)
    margin = rng.uniform(0.1, 1.0, points)
    adversarial = margin / gradient_norm * (rng.uniform(1.0, 1.2, points) if constrained else 3.0)
    flipped = (rng.uniform(0, 1, points) < (0.95 if constrained else 0.5)).astype(float)
    np.savez(path, margin=margin, gradient_norm=gradient_norm, min_adversarial_norm=adversarial,
             counterfactual_flipped_past_boundary=flipped)  # fmt: skip


def write_model(root: Path, data_dir: Path, dataset: str, model: str, seed: int = 0) -> dict:
    """Write one model's train summary and arrays; return its certify/attack/verify/explain summaries."""
    key = RunKey(dataset, model, seed)
    layout = Layout.of(_profile(root))
    rng = np.random.default_rng(zlib.crc32(key.label.encode()))
    x, y = (t.numpy() for t in take_tensors(load_dataset(dataset, data_dir, PREPARE[dataset]).test, CERTIFY_POINTS))
    write_summary(layout.train_summary(key), _train_summary(key, rng, len(y)))
    write_json_atomic(layout.train_history(key), [{"epoch": e, "train_loss": 1.0 / e, "test_accuracy": 0.8} for e in (1, 2, 3)])
    bound = 1.0 if get_method(model).constrained else 40.0
    upper = UpperBoundRecord(bound, [1.0], bound, [])
    certify_arrays, certify = _certify(key, rng, x, y, upper)
    certify_arrays.save(layout.stage_arrays("certify", key))
    attack_arrays, attack = _attack(key, rng, x, certify_arrays)
    attack_arrays.save(layout.stage_arrays("attack", key))
    explain = _explain(key, rng, get_method(model).constrained)
    _explain_arrays(layout.stage_arrays("explain", key), rng, get_method(model).constrained)
    return {"certify": certify, "attack": attack, "verify": _verify(key, upper), "explain": explain}


def _profile(root: Path):
    from lipbench.profiles import load_profile

    return load_profile(root / "params.yaml")


def write_outputs(root: Path, data_dir: Path, models: list[str] = MODELS) -> Path:
    """A complete fixture profile under ``root``; returns its params file."""
    params = write_params(root, data_dir, models)
    layout = Layout.of(_profile(root))
    for dataset in PREPARE:
        summaries = {model: write_model(root, data_dir, dataset, model) for model in models}
        for stage in MODEL_STAGES:
            keyed = {RunKey(dataset, model, 0): summaries[model][stage] for model in models}
            for key, summary in keyed.items():
                write_summary(layout.stage_summary(stage, key), summary)
            metrics = StageMetrics("fixture", stage, dataset, keyed, [key.label for key in keyed], 1.5)
            metrics.write(layout.stage_metrics(stage, dataset))
    return params
