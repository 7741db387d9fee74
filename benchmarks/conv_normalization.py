"""Conv normalisation benchmark: ``conv_correction`` ``strict`` vs ``exact`` (issue: "Conv
normalisation by the exact operator norm in training").

Trains the paper's MNIST CNN shape (``mnist_cnn``, gnp kit: Björck convs + GroupSort2, L2
pooling, Björck dense, per-row output) with multiclass hKR twice from the same seed and the
same batches, once per correction, interleaving the steps so both see the same machine load.
Reports the seconds per training step (median) and, on the first test points, clean
accuracy, the strict certificate's per-conv bounds and certified accuracy at each eps;
then the exact normaliser's own cost per conv layer of ``mnist_cnn`` and ``cifar10_cnn``
(one eigendecomposition per frequency: ``O(grid * channels^3)``).
Data: MNIST prepared by lipbench under ``--data-dir`` (only read), else scikit-learn's 8x8
digits (embedded, no download).

    python benchmarks/conv_normalization.py [--data-dir ../wt-base/data/mnist] [--steps 600]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from lipbench import nn as lnn
from lipbench.data import load_dataset, prepare_dataset, take_tensors
from lipbench.environment import environment_record
from lipbench.io import write_json_atomic
from lipbench.losses import hkr_multiclass_loss
from lipbench.methods.architectures import build_model
from lipbench.nn.certificates import certified_accuracy, certified_radius

CORRECTIONS = ("strict", "exact")
HKR = {"alpha": 200.0, "margin": 0.5}  # the mnist profile's hkr_a200_m0_5
COST_SHAPES = {"mnist_cnn": (1, 28, 28), "cifar10_cnn": (3, 32, 32), "celeba_cnn": (3, 128, 128)}


def load(data_dir: Path | None) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
    """``(name, x_train, y_train, x_test, y_test, epsilons)``: MNIST if prepared, else digits."""
    if data_dir is not None and (data_dir / "prepared" / "mnist" / "manifest.json").is_file():
        splits, name, epsilons = load_dataset("mnist", data_dir), "mnist", [0.5, 1.0, 1.58, 2.0]
    else:
        temporary = Path(tempfile.mkdtemp(prefix="lipbench-digits-"))
        prepare_dataset("digits", temporary, {"seed": 0, "test_fraction": 0.25})
        splits, name, epsilons = (
            load_dataset("digits", temporary, {"seed": 0, "test_fraction": 0.25}),
            "digits",
            [0.1, 0.25, 0.5, 1.0],
        )
    train, test = take_tensors(splits.train), take_tensors(splits.test)
    return name, train[0], train[1], test[0], test[1], epsilons


def train(
    models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, lr: float
) -> dict[str, list[float]]:
    """Interleaved Adam steps (same batches for every model); seconds of each step."""
    optimizers = {name: torch.optim.Adam(model.parameters(), lr=lr) for name, model in models.items()}
    generator = torch.Generator().manual_seed(0)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    order = torch.randperm(len(x), generator=generator)
    for step in range(steps):
        start = (step * batch) % (len(x) - batch + 1)
        index = order[start : start + batch]
        for name, model in models.items():
            began = time.perf_counter()
            optimizers[name].zero_grad(set_to_none=True)
            hkr_multiclass_loss(model(x[index]), y[index], **HKR).backward()
            optimizers[name].step()
            seconds[name].append(time.perf_counter() - began)
    return seconds


def normaliser_cost(architecture: str, shape: tuple[int, ...], repeats: int = 2) -> list[dict]:
    """Seconds of the exact normaliser alone (forward + backward) for each conv of ``architecture``."""
    costs = []
    for module in build_model(architecture, "gnp", shape, 10, "exact"):
        if isinstance(module, lnn.LipschitzConv2d):
            normaliser = module.parametrizations.weight[1]
            weight = torch.randn_like(module.parametrizations.weight.original, requires_grad=True)
            seconds = []
            for _ in range(repeats):
                began = time.perf_counter()
                normaliser(weight).sum().backward()
                seconds.append(time.perf_counter() - began)
            costs.append(
                {
                    "in_channels": module.in_channels,
                    "out_channels": module.out_channels,
                    "input_size": list(module.input_size),
                    "plan": normaliser.plan.describe(),
                    "seconds_forward_backward": min(seconds),
                }
            )
    return costs


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: list[float]) -> dict:
    """Clean and certified accuracy of the exported model with its strict bounds."""
    exported = lnn.export(model)
    bound = lnn.lipschitz_upper_bound(exported, tuple(x.shape[1:]))
    logits = torch.cat([exported(chunk) for chunk in x.split(500)])
    correct = logits.argmax(dim=1) == y
    radius = certified_radius(logits, bound.whole_map, bound.max_per_logit, getattr(bound, "pairwise", None))
    return {
        "clean_accuracy": float(correct.double().mean()),
        "certified_accuracy": {str(eps): value for eps, value in certified_accuracy(radius, correct, epsilons).items()},
        "whole_map_bound": bound.whole_map,
        "max_per_logit_bound": bound.max_per_logit,
        "conv_bounds": [layer.bound for layer in bound.layers if layer.layer_type == "Conv2d"],
        "median_certified_radius": float(radius.clamp_min(0).median()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path("../wt-base/data/mnist"), help="lipbench data dir with prepared MNIST"
    )
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--eval-points", type=int, default=2000)
    parser.add_argument(
        "--cost-architectures", default="mnist_cnn,cifar10_cnn", help=f"comma-separated, of {', '.join(COST_SHAPES)}"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/conv_normalization.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name, x_train, y_train, x_test, y_test, epsilons = load(args.data_dir)
    shape = tuple(x_train.shape[1:])
    models = {}
    for correction in CORRECTIONS:
        torch.manual_seed(0)  # same initial parameters for both
        models[correction] = build_model("mnist_cnn", "gnp", shape, 10, correction)
    initial = {
        correction: [layer.bound for layer in lnn.lipschitz_upper_bound(model, shape).layers if layer.layer_type == "Conv2d"]
        for correction, model in models.items()
    }
    began = time.perf_counter()
    seconds = train(models, x_train, y_train, args.steps, args.batch_size, args.learning_rate)
    results = {}
    for correction, model in models.items():
        model.eval()
        measured = seconds[correction][5:] or seconds[correction]  # first steps warm up
        results[correction] = {
            "seconds_per_step_median": statistics.median(measured),
            "seconds_per_step_mean": statistics.fmean(measured),
            "conv_bounds_at_initialisation": initial[correction],
            **evaluate(model, x_test[: args.eval_points], y_test[: args.eval_points], epsilons),
        }
    ratio = results["exact"]["seconds_per_step_median"] / results["strict"]["seconds_per_step_median"]
    payload = {
        "benchmark": "conv_normalization",
        "dataset": name,
        "architecture": "mnist_cnn (gnp kit)",
        "loss": {"hkr_multiclass": HKR},
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "eval_points": min(args.eval_points, len(x_test)),
        "epsilons": epsilons,
        "results": results,
        "exact_over_strict_seconds_per_step": ratio,
        "threads": torch.get_num_threads(),
        "exact_normaliser_seconds": {
            f"{architecture} ({'x'.join(map(str, COST_SHAPES[architecture]))})": normaliser_cost(
                architecture, COST_SHAPES[architecture]
            )
            for architecture in args.cost_architectures.split(",")
            if architecture
        },
        "wall_seconds": time.perf_counter() - began,
        "environment": environment_record("cpu", seed=0),
    }
    for correction, result in results.items():
        certified = ", ".join(f"eps {eps}: {value:.3f}" for eps, value in result["certified_accuracy"].items())
        print(
            f"{correction:>6}: {result['seconds_per_step_median'] * 1e3:.1f} ms/step, clean {result['clean_accuracy']:.3f}, "
            f"certified {certified}, conv bounds {[round(b, 6) for b in result['conv_bounds']]} "
            f"(at initialisation {[round(b, 6) for b in result['conv_bounds_at_initialisation']]})"
        )
    print(f"exact / strict seconds per step: {ratio:.3f}")
    for architecture, costs in payload["exact_normaliser_seconds"].items():
        layers = ", ".join(
            f"{c['in_channels']}->{c['out_channels']}: {c['seconds_forward_backward'] * 1e3:.1f} ms" for c in costs
        )
        print(f"exact normaliser alone (forward + backward), {architecture}: {layers}")
    write_json_atomic(args.out, payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
