"""End to end, a model built elsewhere: card + ONNX file -> verified entry (issue 17's target:
<= 60 s on 2 cores for a 100k-parameter CNN on the quick profile's digits protocol).

Two unconstrained CNNs of about 100k parameters, trained here for a few hundred steps and
exported with ``torch.onnx.export``: ``lenet`` (conv 16, pool, conv 32, dense 180: the usual
shape on 8x8 digits) and ``wide`` (conv 32 and conv 64 at the full 8x8 grid, then pool, dense
80: 6.5x the multiply-adds). Each is evaluated by ``lipbench evaluate --model`` in a process of
its own, on a scratch copy of the profile (its protocol, its prepared digits; nothing written
into the repository). Prints parameters, multiply-adds per image and wall seconds of each, and
their ratio, all measured in this one run.

Usage: ``python benchmarks/evaluate_onnx.py [--params params.yaml] [--steps 600]
[--models lenet wide] [--out evaluate_onnx.json]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import yaml
from torch import nn

from lipbench.data import load_dataset, take_tensors
from lipbench.environment import environment_record
from lipbench.profiles import load_profile

#: lipbench's command in this interpreter (the benchmark may run without the venv on PATH).
LIPBENCH = (sys.executable, "-m", "lipbench.cli.main")

SHAPES = {
    "lenet": lambda: nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 16, 180), nn.ReLU(), nn.Linear(180, 10),
    ),
    "wide": lambda: nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 16, 80), nn.ReLU(), nn.Linear(80, 10),
    ),
}  # fmt: skip


def multiply_adds(model: nn.Sequential, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one image through the conv and dense layers."""
    total, x = 0, torch.zeros(1, *input_shape)
    for layer in model:
        y = layer(x)
        if isinstance(layer, nn.Conv2d):
            total += y.numel() * layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, nn.Linear):
            total += layer.in_features * layer.out_features
        x = y
    return total


def scratch_profile(params: Path, folder: Path) -> Path:
    """The profile with every path under ``folder`` (its protocol unchanged), digits prepared there."""
    profile = yaml.safe_load(params.read_text())
    profile["paths"] = {key: str(folder / key) for key in ("data", "models", "evaluation", "metrics", "reports")}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    subprocess.run([*LIPBENCH, "prepare", "--params", str(path), "--dataset", "digits"], check=True, capture_output=True)
    return path


def export_model(name: str, params: Path, folder: Path, steps: int) -> tuple[Path, nn.Sequential]:
    """Train ``name`` on the prepared digits for ``steps`` Adam steps; write ONNX + card."""
    profile = load_profile(params)
    data = load_dataset("digits", profile.path_of("data"), profile.prepare_params("digits"))
    x, y = take_tensors(data.train)
    torch.manual_seed(0)
    model = SHAPES[name]()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (64,), generator=generator)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    onnx_path = folder / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, torch.zeros(1, *data.info.input_shape), str(onnx_path), dynamo=False, opset_version=17,
            input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    card = {
        "dataset": "digits", "input_shape": list(data.info.input_shape), "input_range": list(data.info.bounds),
        "normalization": "none", "classes": list(range(10)), "num_classes": 10, "authors": "lipbench benchmark",
        "paper": "https://example.org/none", "architecture": f"{name} CNN (unconstrained)",
    }  # fmt: skip
    (folder / f"{name}.card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return onnx_path, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the profile whose digits protocol is used")
    parser.add_argument("--steps", type=int, default=600, help="training steps of each CNN")
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        params = scratch_profile(args.params.resolve(), Path(scratch))
        for name in args.models:
            onnx_path, model = export_model(name, params, Path(scratch), args.steps)
            command = [*LIPBENCH, "evaluate", "--params", str(params), "--dataset", "digits", "--model", str(onnx_path)]
            started = time.perf_counter()
            result = subprocess.run([*command, "--no-progress"], capture_output=True, text=True, cwd=scratch)
            seconds = time.perf_counter() - started
            if result.returncode != 0:
                sys.exit(f"{name}: lipbench evaluate failed:\n{result.stderr[-3000:]}")
            rows[name] = {
                "parameters": sum(p.numel() for p in model.parameters()),
                "multiply_adds": multiply_adds(model, (1, 8, 8)),
                "seconds": round(seconds, 2),
                "summary": result.stdout.strip().splitlines()[-1],
            }
            print(f"{name}: {rows[name]['parameters']} parameters, {rows[name]['multiply_adds']} multiply-adds, {seconds:.1f} s")
    if {"lenet", "wide"} <= rows.keys():
        time_ratio = rows["wide"]["seconds"] / rows["lenet"]["seconds"]
        work_ratio = rows["wide"]["multiply_adds"] / rows["lenet"]["multiply_adds"]
        print(f"wide / lenet: x{time_ratio:.2f} the time for x{work_ratio:.2f} the work")
    if args.out is not None:
        record = {"models": rows, "protocol": str(args.params), "environment": environment_record("cpu")}
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
