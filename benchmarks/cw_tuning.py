"""Carlini-Wagner L2 tuning evidence: strength against DeepFool and cost, per configuration.

For each model it runs DeepFool (the profile's options) and several C&W configurations on the
first ``--points`` test points and reports, per configuration: C&W's success rate, the median
C&W norm over the median DeepFool norm on the points both break (both verified on the
float32 model, misclassified points left out), the median of the pointwise ratios, and
seconds. ``impl: foolbox`` is foolbox 3.3.4's ``L2CarliniWagnerAttack``; its all-zero
fallback image (returned where it found nothing) is counted in ``zero_fallbacks`` and
scored as not found; ``impl: lipbench`` is ``lipbench.evaluate.attacks.carlini_wagner``.

    python benchmarks/cw_tuning.py --dataset digits            # trains standard + hkr (~1 min)
    python benchmarks/cw_tuning.py --dataset mnist --models standard hkr \
        --models-root /work/wt-base/data/mnist/models/mnist --data-root /work/wt-base/data/mnist

Writes ``benchmarks/results/cw_tuning_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from lipbench.data import load_dataset, prepare_dataset, take_tensors
from lipbench.environment import environment_record
from lipbench.evaluate.attacks import ATTACKS
from lipbench.evaluate.attacks.base import prepared_target, verify_minimal
from lipbench.io import write_json_atomic
from lipbench.profiles import load_profile
from lipbench.runs import Layout, RunKey
from lipbench.train import load_weights, run_training

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import foolbox as fb

ROOT = Path(__file__).resolve().parents[1]
OLD = {"steps": 100, "binary_search_steps": 5}  # the profiles' options before this benchmark


def _lipbench(steps: int, searches: int, stepsize: float, const: float, **extra: Any) -> dict[str, Any]:
    name = f"lipbench {steps}x{searches}, stepsize {stepsize:g}, c0 {const:g}" + "".join(f", {k} {v}" for k, v in extra.items())
    options = {"steps": steps, "binary_search_steps": searches, "stepsize": stepsize, "initial_const": const}
    return {"name": name, "impl": "lipbench", **options, **extra}


#: ``paper: True``: GPU-sized (the paper profile), run with ``--paper-sized``.
CONFIGS: list[dict[str, Any]] = [
    {"name": "foolbox 100x5, old profile options (stepsize 0.01, c0 0.001)", "impl": "foolbox", **OLD},
    {"name": "foolbox 100x5, stepsize 0.1, c0 1", "impl": "foolbox", **OLD, "stepsize": 0.1, "initial_const": 1.0},
    _lipbench(100, 5, 0.01, 0.001),
    _lipbench(100, 5, 0.1, 0.01),
    _lipbench(50, 5, 0.1, 1.0),
    _lipbench(100, 5, 0.1, 1.0),
    _lipbench(100, 5, 0.1, 1.0, abort_early=False),
    _lipbench(100, 5, 0.2, 1.0),
    _lipbench(200, 5, 0.1, 1.0),
    _lipbench(200, 9, 0.05, 1.0),
    _lipbench(1000, 9, 0.01, 1.0) | {"paper": True},
    _lipbench(1000, 9, 0.05, 1.0) | {"paper": True},
]


def train_digits(work: Path, models: list[str]) -> tuple[dict[str, nn.Module], Path]:
    """Train ``models`` on digits with the quick profile's recipe (``params.yaml``)."""
    quick = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = {
        "profile": "cw_tuning",
        "root": ".",
        "params_file": "params.yaml",
        "paths": {key: str(work / key) for key in ("data", "models", "evaluation", "metrics", "reports")},
        "datasets": ["digits"],
        "models": models,
        "seeds": [0],
        "prepare": {"mirror": "", "digits": quick["prepare"]["digits"]},
        "train": {
            "device": "cpu",
            "digits": {"recipe": quick["train"]["digits"]["recipe"], **{m: quick["train"]["digits"][m] for m in models}},
        },
        "evaluate": {"device": "cpu", "digits": {"epsilons": [0.25]}},
    }
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    profile = load_profile(work / "params.yaml")
    prepare_dataset("digits", profile.path_of("data"), profile.prepare_params("digits"))
    trained = {}
    for model in models:
        key = RunKey("digits", model, 0)
        weights = Layout.of(profile).model_dir(key) / "weights.safetensors"
        if not weights.exists():
            run_training(profile, key, progress=False)
        trained[model] = load_weights(weights)[0]
    return trained, profile.path_of("data")


def foolbox_cw(model: nn.Module, x: torch.Tensor, y: torch.Tensor, options: dict[str, Any]) -> tuple[np.ndarray, int]:
    """foolbox's C&W, verified like lipbench's attacks; its all-zero fallback scored as not found."""
    with prepared_target(model, "cpu", x, y) as target, torch.enable_grad():
        raw, _, _ = fb.attacks.L2CarliniWagnerAttack(**options)(fb.PyTorchModel(target.net, bounds=(0, 1)), x, y, epsilons=None)
        _, norms = verify_minimal(target, x, y, raw)
    fallback = (raw.flatten(1).abs().sum(dim=1) == 0).numpy() & (x.flatten(1).abs().sum(dim=1) > 0).numpy()
    return np.where(fallback, np.inf, norms), int(fallback.sum())


def score(cw: np.ndarray, df: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """Strength of C&W relative to DeepFool on the correctly classified points."""
    both = correct & np.isfinite(cw) & np.isfinite(df)
    row: dict[str, Any] = {"success_rate": float(np.isfinite(cw[correct]).mean()), "both_broken": int(both.sum())}
    if both.any():
        row["median_cw"], row["median_deepfool"] = float(np.median(cw[both])), float(np.median(df[both]))
        row["median_ratio"] = row["median_cw"] / row["median_deepfool"]
        row["pointwise_median_ratio"] = float(np.median(cw[both] / df[both]))
        row["cw_within_1pct_of_deepfool"] = float((cw[both] <= 1.01 * df[both]).mean())
    return row


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, configs: list[dict[str, Any]]) -> dict[str, Any]:
    """DeepFool, then every C&W configuration, on ``(x, y)``; prints one line per configuration."""
    with torch.no_grad():
        out = model(x)
    pred = (out[:, 0] > 0).long() if out.shape[1] == 1 else out.argmax(1)
    correct = (pred == y).numpy()
    start = time.perf_counter()
    df = ATTACKS.get("deepfool_l2")(model, x, y, [1.0], batch_size=len(x)).min_norm
    result = {
        "clean_accuracy": float(correct.mean()),
        "deepfool": {"seconds": time.perf_counter() - start, "success_rate": float(np.isfinite(df[correct]).mean())},
    }
    rows = []
    for config in configs:
        options = {k: v for k, v in config.items() if k not in ("name", "impl", "paper")}
        start, fallbacks = time.perf_counter(), 0
        cw, keep = np.zeros(len(x)), torch.from_numpy(correct)  # misclassified: norm 0, as the attack stage
        if config["impl"] == "foolbox":
            cw[correct], fallbacks = foolbox_cw(model, x[keep], y[keep], options)
        else:
            res = ATTACKS.get("cw_l2")(model, x[keep], y[keep], [1.0], batch_size=len(x), options=options)
            cw[correct], fallbacks = res.min_norm, res.info["found_but_not_verified"]
        row = {"name": config["name"], "impl": config["impl"], "options": options, "seconds": time.perf_counter() - start}
        row |= score(cw, df, correct)
        row["zero_fallbacks" if config["impl"] == "foolbox" else "found_but_not_verified"] = fallbacks
        rows.append(row)
        ratio, success = row.get("median_ratio", float("nan")), row["success_rate"]
        print(f"  {row['name']:<62} ratio {ratio:.3f}  success {success:.2f}  {row['seconds']:.1f} s", flush=True)
    result["configs"] = rows
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    parser.add_argument("--models", nargs="+", default=["standard", "hkr"])
    parser.add_argument("--points", type=int, default=None, help="test points (default: digits 200, mnist 100, as the profiles)")
    parser.add_argument("--configs", type=int, nargs="+", default=None, help="indices into CONFIGS (default: all)")
    parser.add_argument(
        "--work", type=Path, default=None, help="digits: folder for the trained models (default: a temporary one)"
    )
    parser.add_argument("--data-root", type=Path, default=None, help="mnist: the prepared data folder (paths.data)")
    parser.add_argument("--models-root", type=Path, default=None, help="mnist: folder holding <model>/seed0/weights.safetensors")
    parser.add_argument("--paper-sized", action="store_true", help="also the GPU-sized configurations (1000 steps x 9)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configs = (
        [CONFIGS[i] for i in args.configs] if args.configs else [c for c in CONFIGS if args.paper_sized or not c.get("paper")]
    )
    points = args.points or (200 if args.dataset == "digits" else 100)
    with tempfile.TemporaryDirectory() as tmp:
        if args.dataset == "digits":
            models, data_root = train_digits(args.work or Path(tmp), args.models)
            x, y = take_tensors(load_dataset("digits", data_root, {"seed": 0, "test_fraction": 0.25}).test, points)
        else:
            if args.data_root is None or args.models_root is None:
                parser.error("--dataset mnist needs --data-root and --models-root")
            models = {m: load_weights(args.models_root / m / "seed0" / "weights.safetensors")[0] for m in args.models}
            x, y = take_tensors(load_dataset("mnist", args.data_root, {}).test, points)
        report: dict[str, Any] = {"dataset": args.dataset, "points": len(x), "threads": args.threads, "models": {}}
        for name, model in models.items():
            print(f"{args.dataset} {name}", flush=True)
            report["models"][name] = evaluate_model(model.eval(), x, y, configs)
    report["environment"] = environment_record()
    out = args.out or ROOT / "benchmarks" / "results" / f"cw_tuning_{args.dataset}.json"
    write_json_atomic(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
