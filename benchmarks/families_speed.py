"""Train-step time of every registered layer family on one small LipConvNet-like conv
shape, against the unconstrained twin, orthogonium's raw layer where we wrap it, and orthogonium's own
implementation where we wrote ours (AOL, SLL; issue 16's target: ours <= 1.0x).

Usage: ``python benchmarks/families_speed.py [--channels 32] [--size 16] [--batch-size 64]
[--repeats 5] [--out families_speed.json]``. Prints, per family, ms per train step,
images/s and the ratio to the unconstrained twin, all measured in this one run (the variants of a
family take turns step by step, so a slow spell of the machine hits them alike).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from lipbench.nn import GroupSort2, unconstrained_twin
from lipbench.nn.families import get_family, list_families


def family_model(name: str, channels: int, size: int) -> nn.Sequential:
    """``conv(c, c) -> GroupSort2 -> conv(c, c)`` at ``size x size``, stride 1, kernel 3."""
    family = get_family(name)
    if family.conv is None:
        raise ValueError(f"family {name!r} has no conv layer")
    convs = [family.conv(channels, channels, 3, 1, (size, size)) for _ in range(2)]
    return nn.Sequential(convs[0], GroupSort2(), convs[1])


def raw_orthogonium(model: nn.Sequential) -> nn.Sequential | None:
    """The same chain with orthogonium's layers unwrapped (``None`` where we do not wrap)."""
    layers = [getattr(module, "layer", None) for module in model if not isinstance(module, GroupSort2)]
    if any(layer is None for layer in layers):
        return None
    return nn.Sequential(layers[0], GroupSort2(), layers[1])


def orthogonium_counterpart(name: str, channels: int) -> nn.Sequential | None:
    """orthogonium's own layer for a family we wrote ourselves (AOL, SLL), in the same chain; else ``None``."""
    if name == "aol":
        from orthogonium.layers.conv.AOL.aol import AOLConv2D

        convs = [AOLConv2D(channels, channels, 3, padding=1) for _ in range(2)]
    elif name == "sll":
        from orthogonium.layers.conv.SLL.sll_layer import SDPBasedLipschitzResBlock

        convs = [SDPBasedLipschitzResBlock(channels, 1, kernel_size=3) for _ in range(2)]
    else:
        return None
    return nn.Sequential(convs[0], GroupSort2(), convs[1])


def train_step_seconds(models: dict[str, nn.Module], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median wall time of one forward + backward + SGD step of each model (after one warm-up step
    each). The models take turns step by step (round robin), so a slow spell of the machine hits
    every variant alike and their ratios stay fair."""
    optimizers = {name: torch.optim.SGD(model.parameters(), lr=1e-3) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for index in range(repeats + 1):
        for name, model in models.items():
            start = time.perf_counter()
            optimizers[name].zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            optimizers[name].step()
            if index:
                times[name].append(time.perf_counter() - start)
    return {name: sorted(values)[len(values) // 2] for name, values in times.items()}


def saved_for_backward_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one training forward (each storage
    counted once): the layer's activation memory, device-independent (on CUDA, Prach et al. measure
    ``max_memory_allocated``, which adds weights, gradients and the allocator's slack)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(x).square().mean()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def measure(channels: int, size: int, batch_size: int, repeats: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch_size, channels, size, size)
    results = {}
    for name in list_families():
        if get_family(name).conv is None:
            continue
        model = family_model(name, channels, size).train()
        variants = {"constrained": model, "twin": unconstrained_twin(model).train()}
        raw, theirs = raw_orthogonium(model), orthogonium_counterpart(name, channels)
        if raw is not None:
            variants["orthogonium_raw"] = raw
        if theirs is not None:  # ours against orthogonium's implementation of the same layer
            variants["orthogonium"] = theirs.train()
        row = {f"{variant}_s": seconds for variant, seconds in train_step_seconds(variants, x, repeats).items()}
        row["saved_mb"] = saved_for_backward_bytes(model, x) / 2**20
        row["twin_saved_mb"] = saved_for_backward_bytes(variants["twin"], x) / 2**20
        for variant in ("orthogonium_raw", "orthogonium"):
            if variant in variants:
                row[f"ratio_over_{variant}"] = row["constrained_s"] / row[f"{variant}_s"]
        row["ratio_over_twin"] = row["constrained_s"] / row["twin_s"]
        row["images_per_second"] = batch_size / row["constrained_s"]
        results[name] = row
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    results = measure(args.channels, args.size, args.batch_size, args.repeats)
    for name, row in results.items():
        raw = f"  x{row['ratio_over_orthogonium_raw']:.2f} vs orthogonium raw" if "orthogonium_raw_s" in row else ""
        raw += f"  x{row['ratio_over_orthogonium']:.2f} vs orthogonium's {name}" if "orthogonium_s" in row else ""
        print(
            f"{name:8s} {1e3 * row['constrained_s']:8.2f} ms/step  {row['images_per_second']:9.1f} img/s  "
            f"x{row['ratio_over_twin']:.2f} vs twin  {row['saved_mb']:7.2f} MB saved for backward "
            f"(twin {row['twin_saved_mb']:.2f}){raw}"
        )
    if args.out is not None:
        shape = {"channels": args.channels, "size": args.size, "batch_size": args.batch_size, "repeats": args.repeats}
        args.out.write_text(json.dumps({"shape": shape, "families": results}, indent=2))


if __name__ == "__main__":
    main()
