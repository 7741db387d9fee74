"""Core speed benchmark (issue: lipbench core, section 5).

Measures, in one process and one run, the train step (forward + hKR loss + backward +
Adam step), the eval forward and an L2 PGD-10 attack (images/s) at batch 256 of the paper's MNIST CNN shape
(conv 16 -> L2 pool -> conv 32 -> L2 pool -> dense 64 -> 10, GroupSort2) in three forms:
lipbench constrained, the same architecture from deel-torchlip layers, and the
unconstrained twin (nn.Conv2d/nn.Linear, ReLU, max pooling). Timings are interleaved
across models over several rounds and the median per step is kept; the ratios are
printed and written as JSON.

    python benchmarks/core_speed.py [--device cuda] [--out benchmarks/results/core_speed_cpu.json]

Targets: lipbench/unconstrained <= 1.25 (train), lipbench/deel-torchlip <= 0.6 (train),
exported eval / unconstrained eval <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lipbench import nn as lnn
from lipbench.environment import environment_record
from lipbench.evaluate.attacks import AutocastLogits
from lipbench.io import write_json_atomic
from lipbench.losses import hkr_multiclass_loss
from lipbench.methods.builtin import l2_pgd
from lipbench.train.precision import parametrized_weights, precision_context  # the training loop's own bf16 step

TARGETS = {
    "train_lipbench_over_unconstrained": 1.25,
    "train_lipbench_over_deel_torchlip": 0.6,
    "eval_exported_over_unconstrained": 1.05,
}


def lipbench_mnist_cnn() -> nn.Sequential:
    return nn.Sequential(
        lnn.LipschitzConv2d(1, 16, 3),
        lnn.GroupSort2(),
        lnn.L2NormPool2d(2),
        lnn.LipschitzConv2d(16, 32, 3),
        lnn.GroupSort2(),
        lnn.L2NormPool2d(2),
        nn.Flatten(),
        lnn.LipschitzLinear(32 * 7 * 7, 64),
        lnn.GroupSort2(),
        lnn.RowNormalizedLinear(64, 10),
    )


def deel_torchlip_mnist_cnn() -> nn.Module:
    from deel import torchlip

    return torchlip.Sequential(
        torchlip.SpectralConv2d(1, 16, 3, padding=1),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(2),
        torchlip.SpectralConv2d(16, 32, 3, padding=1),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(2),
        nn.Flatten(),
        torchlip.SpectralLinear(32 * 7 * 7, 64),
        torchlip.GroupSort2(),
        torchlip.FrobeniusLinear(64, 10),
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    _synchronize(device)
    return (time.perf_counter() - start) / repeats


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool = False) -> Callable[[], None]:
    """Forward + hKR loss + backward + Adam step; bf16 exactly as the training loop runs it
    (constrained weights computed once in fp32, then the step under autocast)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    parametrized = parametrized_weights(model)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision_context("bf16" if bf16 else "fp32", x.device, parametrized):
            outputs = model(x)
        loss = hkr_multiclass_loss(outputs.float(), y, alpha=50.0, margin=1.0)
        loss.backward()
        optimizer.step()

    return step


def _eval_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def step() -> None:
        with torch.inference_mode():
            model(x)

    return step


def _attack_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool = False, steps: int = 10) -> Callable[[], None]:
    """One L2 PGD attack (``steps`` gradient steps, eps 1.0) on a batch, the evaluation's hot loop."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if bf16:
        model = AutocastLogits(model, x.device.type)
    generator = torch.Generator().manual_seed(0)

    def loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, labels)

    def step() -> None:
        l2_pgd(model, x, y, loss, 1.0, steps, 0.25, (0.0, 1.0), generator)

    return step


def measure(steps: dict[str, Callable[[], None]], rounds: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each step, interleaved over ``rounds``."""
    for step in steps.values():  # warm-up
        for _ in range(3):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            samples[name].append(_timed(step, repeats, device))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast in train steps and attacks")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/core_speed_<device>[_bf16].json")
    args = parser.parse_args()
    device = torch.device(args.device)
    bf16 = args.precision == "bf16"
    if args.out is None:
        args.out = Path(f"benchmarks/results/core_speed_{device.type}{'_bf16' if bf16 else ''}.json")
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)

    lipbench_model = lipbench_mnist_cnn().to(device)
    deel_model = deel_torchlip_mnist_cnn().to(device)
    twin_model = lnn.unconstrained_twin(lipbench_mnist_cnn()).to(device)

    start = time.perf_counter()
    train = measure(
        {
            "lipbench": _train_step(lipbench_model, x, y, bf16),
            "deel_torchlip": _train_step(deel_model, x, y, bf16),
            "unconstrained": _train_step(twin_model, x, y, bf16),
        },
        args.rounds,
        args.repeats,
        device,
    )
    exported = lnn.export(lipbench_model)
    deel_exported = deel_model.vanilla_export().to(device)
    evaluation = measure(
        {
            "lipbench_exported": _eval_step(exported, x),
            "lipbench_eval_mode": _eval_step(lipbench_model, x),
            "deel_torchlip_eval_mode": _eval_step(deel_model, x),
            "deel_torchlip_exported": _eval_step(deel_exported, x),
            "unconstrained": _eval_step(twin_model, x),
        },
        args.rounds,
        args.repeats * 2,
        device,
    )
    attack = measure(
        {
            "lipbench_exported": _attack_step(exported, x, y, bf16),
            "deel_torchlip_exported": _attack_step(deel_exported, x, y, bf16),
            "unconstrained": _attack_step(twin_model, x, y, bf16),
        },
        max(2, args.rounds // 2),
        1,
        device,
    )
    ratios = {
        "train_lipbench_over_unconstrained": train["lipbench"] / train["unconstrained"],
        "train_lipbench_over_deel_torchlip": train["lipbench"] / train["deel_torchlip"],
        "train_deel_torchlip_over_unconstrained": train["deel_torchlip"] / train["unconstrained"],
        "eval_exported_over_unconstrained": evaluation["lipbench_exported"] / evaluation["unconstrained"],
        "eval_lipbench_eval_mode_over_unconstrained": evaluation["lipbench_eval_mode"] / evaluation["unconstrained"],
        "eval_deel_torchlip_eval_mode_over_unconstrained": evaluation["deel_torchlip_eval_mode"] / evaluation["unconstrained"],
        "attack_lipbench_over_deel_torchlip": attack["lipbench_exported"] / attack["deel_torchlip_exported"],
        "attack_lipbench_over_unconstrained": attack["lipbench_exported"] / attack["unconstrained"],
    }
    result = {
        "benchmark": "core_speed",
        "architecture": "conv16-l2pool-conv32-l2pool-dense64-10, GroupSort2, hKR (alpha=50, m=1)",
        "batch_size": args.batch_size,
        "precision": args.precision,
        "rounds": args.rounds,
        "repeats_per_round": args.repeats,
        "train_step_seconds": train,
        "eval_forward_seconds": evaluation,
        "train_images_per_second": {name: args.batch_size / seconds for name, seconds in train.items()},
        "attack_seconds_pgd10": attack,
        "attack_images_per_second_pgd10": {name: args.batch_size / seconds for name, seconds in attack.items()},
        "ratios": ratios,
        "targets": TARGETS,
        "targets_met": {name: ratios[name] <= limit for name, limit in TARGETS.items()},
        "wall_time_seconds": time.perf_counter() - start,
        "environment": environment_record(device),
    }
    print(f"device: {result['environment']['device']}  batch {args.batch_size}")
    for name, seconds in train.items():
        print(f"train step  {name:28s} {seconds * 1e3:8.2f} ms")
    for name, seconds in evaluation.items():
        print(f"eval fwd    {name:28s} {seconds * 1e3:8.2f} ms")
    for name, seconds in attack.items():
        print(f"PGD-10      {name:28s} {seconds * 1e3:8.2f} ms  ({args.batch_size / seconds:8.0f} images/s)")
    for name, seconds in train.items():
        print(f"train       {name:28s} {args.batch_size / seconds:8.0f} images/s")
    for name, value in ratios.items():
        limit = TARGETS.get(name)
        verdict = "" if limit is None else f"  (target <= {limit}: {'met' if value <= limit else 'NOT met'})"
        print(f"{name:48s} {value:6.3f}{verdict}")
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
