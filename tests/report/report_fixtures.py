"""Small synthetic pipeline outputs in the exact formats of the train, certify, attack and
verify stages, for a two-dataset (moons, digits), three-model (standard, hkr, kr) profile."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lipbench.data import load_dataset, take_tensors
from lipbench.methods import get_method

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


def write_params(root: Path, data_dir: Path, models: list[str] = MODELS) -> Path:
    """A profile params file whose paths all point under ``root`` (data: the shared ``data_dir``)."""
    train = {d: {"recipe": {"epochs": 3, "batch_size": 64, "learning_rate": 0.005}, **{m: {} for m in models}} for d in PREPARE}
    for dataset, margin in (("moons", 0.1), ("digits", 0.3)):
        if "hkr" in models:
            train[dataset]["hkr"] = {"alpha": 50.0, "margin": margin}
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
        "methods": models,
        "seeds": [0],
        "prepare": {"mirror": "", **PREPARE},
        "train": {"device": "cpu", **train},
        "evaluate": evaluate,
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def _dump(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def _curve(rng: np.random.Generator, start: float, count: int) -> list[float]:
    return sorted((start * rng.uniform(0.3, 1.0, count)).round(3).tolist(), reverse=True)


def write_model(root: Path, data_dir: Path, dataset: str, model: str, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Write one model's train metrics and arrays; return its certify/attack/verify summaries."""
    rng = np.random.default_rng(zlib.crc32(f"{dataset}/{model}/{seed}".encode()))
    method = get_method(model)
    x, y = (t.numpy() for t in take_tensors(load_dataset(dataset, data_dir, PREPARE[dataset]).test, CERTIFY_POINTS))
    shape, binary = x.shape[1:], dataset == "moons"
    eps = EPSILONS[dataset]
    folder = root / "reports" / "fixture" / "metrics" / "train" / dataset / model / f"seed{seed}"
    _dump(
        folder / "metrics.json",
        {
            "dataset": dataset,
            "model": model,
            "method": model,
            "paper_name": method.paper_name,
            "constrained": method.constrained,
            "architecture": f"{dataset}_dense",
            "method_params": {},
            "seed": seed,
            "epochs": 3,
            "train_accuracy": 0.95,
            "test_accuracy": float(rng.uniform(0.8, 1.0)),
            "parameter_count": 1234,
            "train_examples": 300,
            "test_examples": len(y),
            "peak_memory_mb": {"process_rss": 600.0},
            "timing": {"seconds_per_epoch": [0.1, 0.12, 0.11], "train_seconds": 0.33, "wall_seconds": 1.0},
            "environment": ENVIRONMENT,
        },
    )
    _dump(folder / "history.json", [{"epoch": e, "train_loss": 1.0 / e, "test_accuracy": 0.8} for e in (1, 2, 3)])

    logits = rng.normal(size=(len(y), 1 if binary else 10)).astype(np.float32)
    radius, correct = np.abs(rng.normal(0.3, 0.2, len(y))), rng.random(len(y)) < 0.85
    certify = {
        "radius": radius,
        "correct": correct,
        "labels": y,
        "logits": logits,
        "epsilons": np.array(eps),
        "gradients": rng.normal(size=(16, *shape)).astype(np.float32),
        "whole_map_lipschitz": np.float64(1.0),
        "per_logit_lipschitz": np.ones(logits.shape[1]),
    }
    if binary:
        gx, gy = np.linspace(-1.5, 2.5, 20, dtype=np.float32), np.linspace(-1.0, 1.5, 15, dtype=np.float32)
        certify.update(grid_x=gx, grid_y=gy, grid_values=(gx[None, :] - gy[:, None])[..., None].astype(np.float32))
    arrays = root / "evaluation"
    (arrays / "certify" / dataset / model / f"seed{seed}").mkdir(parents=True, exist_ok=True)
    np.savez(arrays / "certify" / dataset / model / f"seed{seed}" / "certify.npz", **certify)

    n = ATTACK_POINTS
    attack = {
        "epsilons": np.array(eps),
        "robust": rng.random((len(eps), n)) < 0.6,
        "clean_correct": correct[:n],
        "example_indices": np.arange(16),
    }
    for name in ATTACKS:
        attack[f"success_{name}"] = rng.random((len(eps), n)) < 0.3
        if name in EPS_ATTACKS:
            attack[f"examples_{name}"] = (x[None, :16] + 0.05 * rng.normal(size=(len(eps), 16, *shape))).astype(np.float32)
        else:
            examples = (x[:16] + 0.1 * rng.normal(size=(16, *shape))).astype(np.float32)
            examples[~correct[:16]] = np.nan
            attack[f"examples_{name}"] = examples
            attack[f"min_norm_{name}"] = np.where(correct[:n], np.abs(rng.normal(0.4, 0.2, n)), 0.0)
    attack["min_norm_deepfool_l2"][-1] = np.inf
    attack["min_norm_deepfool_l2_curve"] = np.where(correct[:DEEPFOOL_POINTS], np.abs(rng.normal(0.4, 0.2, DEEPFOOL_POINTS)), 0)
    (arrays / "attack" / dataset / model / f"seed{seed}").mkdir(parents=True, exist_ok=True)
    np.savez(arrays / "attack" / dataset / model / f"seed{seed}" / "attack.npz", **attack)

    bound = 1.0 if method.constrained else 40.0
    upper = {
        "whole_map": bound,
        "per_logit": [1.0],
        "max_per_logit": bound,
        "layers": [{"name": "1", "type": "Linear", "input_shape": [2], "bound": 1.0, "method": "svd"}],
    }
    clean = float(correct.mean())
    return {
        "certify": {
            "dataset": dataset,
            "model": model,
            "seed": seed,
            "points": len(y),
            "clean_accuracy": clean,
            "epsilons": eps,
            "certified_accuracy": _curve(rng, 0.8, len(eps)),
            "lipschitz_upper_bound": upper,
            "seconds": 0.02,
            "parameter_count": 1234,
            "environment": ENVIRONMENT,
        },
        "attack": {
            "dataset": dataset,
            "model": model,
            "seed": seed,
            "epsilons": eps,
            "attacks": ATTACKS,
            "n_points": n,
            "clean_accuracy": float(correct[:n].mean()),
            "robust_accuracy": _curve(rng, 0.7, len(eps)),
            "certified_accuracy": _curve(rng, 0.6, len(eps)),
            "per_attack_robust_accuracy": {a: _curve(rng, 0.9, len(eps)) for a in ATTACKS},
            "calls": {a: n for a in ATTACKS},
            "seconds": {a: 0.5 for a in ATTACKS},
            "environment": ENVIRONMENT,
        },
        "verify": {
            "dataset": dataset,
            "model": f"fixture:{dataset}/{model}/seed{seed}",
            "seed": seed,
            "status": "verified",
            "upper_bound": upper,
            "lower_bound": {
                "whole_map": 0.9 * upper["whole_map"],
                "per_logit": [0.9],
                "max_per_logit": 0.9 * upper["max_per_logit"],
                "logit_difference": 1.2,
                "sources": {},
            },
            "layers": [],
            "failures": [],
            "seconds": 0.05,
            "environment": ENVIRONMENT,
        },
    }


def write_outputs(root: Path, data_dir: Path, models: list[str] = MODELS) -> Path:
    """A complete fixture profile under ``root``; returns its params file."""
    params = write_params(root, data_dir, models)
    for dataset in PREPARE:
        summaries = {m: write_model(root, data_dir, dataset, m) for m in models}
        for stage in ("certify", "attack", "verify"):
            _dump(
                root / "reports" / "fixture" / "metrics" / stage / f"{dataset}.json",
                {
                    "profile": "fixture",
                    "stage": stage,
                    "dataset": dataset,
                    "seconds": 1.5,
                    "recomputed": [f"{dataset}/{m}/seed0" for m in models],
                    "models": {m: {"seed0": summaries[m][stage]} for m in models},
                },
            )
    return params
