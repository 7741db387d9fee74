"""Data-parallel training: one DDP step equals one process on the whole batch, torchrun
end to end, rank-0-only writes, a NaN guard that stops every rank, data sharding, and the
speed options of the recipe.

Multi-process tests run 2 gloo ranks on CPU with one torch thread each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset, TensorDataset

from lipbench.methods import Method, get_method
from lipbench.profiles import load_profile
from lipbench.runs import RunKey
from lipbench.train import TrainingDivergedError, config_from_profile, run_training
from lipbench.train.distributed import DistributedContext, make_step_loss
from lipbench.train.loop import _batches

WORLD_SIZE = 2
BATCH = 37  # odd: the two shards differ in size (19 and 18)


def _loss_method(loss: str, **defaults: float) -> Method:
    """An unregistered method using ``loss`` through the base class's loss_function."""
    return type(f"Loss_{loss}", (Method,), {"name": loss, "loss": loss, "defaults": defaults})()


class _LegacyCrossEntropy(Method):
    """A plug-in with the older signature: its loss is normalised over what it is given."""

    name = "legacy_ce"

    def loss_function(self, binary, params):
        return lambda outputs, labels: torch.nn.functional.cross_entropy(outputs, labels)


class _LegacyHKR(Method):
    name = "legacy_hkr"

    def loss_function(self, binary, params):
        from lipbench.losses import make_loss

        return make_loss("hkr", binary=binary, alpha=10.0, margin=0.5)


# (name, method, binary?, batch size); the model is hkr's GNP net for (2,)/2 or (1, 8, 8)/10.
CASES = [
    ("hkr binary", lambda: get_method("hkr"), True, BATCH),
    ("hkr multiclass", lambda: get_method("hkr"), False, BATCH),
    ("hkr multiclass w=K-1", lambda: _loss_method("hkr", alpha=5.0, margin=0.3, positive_hinge_weight=9.0), False, BATCH),
    ("kr binary", lambda: _loss_method("kr"), True, BATCH),
    ("hinge binary", lambda: _loss_method("hinge", margin=0.7), True, BATCH),
    ("hinge multiclass", lambda: _loss_method("hinge", margin=0.7), False, BATCH),
    ("cross_entropy binary", lambda: _loss_method("cross_entropy", temperature=3.0), True, BATCH),
    ("cross_entropy multiclass", lambda: _loss_method("cross_entropy", temperature=3.0), False, BATCH),
    ("hkr binary, one example: rank 1's shard is empty", lambda: get_method("hkr"), True, 1),
    ("legacy signature, per-example mean", lambda: _LegacyCrossEntropy(), False, BATCH),
]


def _fixed_batch(binary: bool, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    if binary:
        x = torch.randn(size, 2, generator=generator, dtype=torch.float64)
        # Rank 0's shard holds negatives only, rank 1's both classes: per-shard class
        # means would not be the batch's.
        y = ((torch.arange(size) >= (size + 1) // 2) & (torch.arange(size) % 3 != 0)).long()
        y[-1] = 1
    else:
        x = torch.rand(size, 1, 8, 8, generator=generator, dtype=torch.float64)
        y = torch.randint(0, 10, (size,), generator=generator)
    return x, y


def _model(binary: bool) -> torch.nn.Module:
    """hkr's GNP network, in float64 so that the comparison sees the algebra, not float32
    rounding (in float32 the same checks agree to about 1e-6 relative)."""
    torch.manual_seed(3)
    method = get_method("hkr")
    model = method.build_model((2,), 2, "moons_dense") if binary else method.build_model((1, 8, 8), 10, "digits_dense")
    return model.double()


def _one_step(method: Method, binary: bool, size: int, context: DistributedContext) -> dict:
    """Loss value and parameter gradients of one process on the whole batch, and of this
    rank's DDP step on its shard (after DDP's averaging)."""
    x, y = _fixed_batch(binary, size)
    params = method.resolve_params({})
    reference = _model(binary)
    loss = method.loss_function(binary=binary, params=params)(reference(x), y)
    loss.backward()
    replica = _model(binary)
    ddp = context.wrap(replica, torch.device("cpu"))
    first, stop = context.shard_bounds(size)
    step_loss = make_step_loss(method, binary, params, context)
    objective, value = step_loss(ddp(x[first:stop]), y[first:stop], size)
    objective.backward()
    value_error = abs(float(value) - float(loss))
    gradient_error = max(
        float((a.grad - b.grad).abs().max() / (1 + b.grad.abs().max()))
        for a, b in zip(replica.parameters(), reference.parameters())
    )
    return {
        "value_error": value_error / (1 + abs(float(loss))),
        "gradient_error": gradient_error,
        "global_normalisers": step_loss.global_normalisers,
    }


def _worker(rank: int, store: str, profile: str, out_root: str) -> None:
    """One gloo rank: equivalence cases, a training run with per-rank output folders, and a
    loss that turns NaN on rank 1 only."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD_SIZE)})
    results: dict = {"cases": {}, "errors": []}
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE)
    try:
        context = DistributedContext(rank, WORLD_SIZE, rank, "gloo")
        for name, method, binary, size in [*CASES, ("legacy hkr", lambda: _LegacyHKR(), True, BATCH)]:
            results["cases"][name] = _one_step(method(), binary, size, context)

        root = Path(out_root)
        metrics = run_training(
            load_profile(profile), RunKey("moons", "hkr", 0), root / f"out{rank}", root / f"metrics{rank}", progress=False
        )
        results["world_size"] = metrics.environment["distributed"]["world_size"]

        hkr = type(get_method("hkr"))
        original = hkr.loss_function
        calls = {"count": 0}

        def poisoned(self, binary, params, reduce=None):
            loss = original(self, binary, params, reduce=reduce)

            def wrapped(outputs, labels):
                calls["count"] += 1
                value = loss(outputs, labels)
                return value * float("nan") if rank == 1 and calls["count"] == 5 else value  # epoch 2, step 2

            return wrapped

        hkr.loss_function = poisoned
        try:
            run_training(load_profile(profile), RunKey("moons", "hkr", 1), root / "nan", root / "nan-metrics", progress=False)
        except TrainingDivergedError as error:
            results["diverged"] = str(error)
        finally:
            hkr.loss_function = original
    except Exception:
        results["errors"].append(traceback.format_exc())
        raise
    finally:
        Path(out_root, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()


_SPAWNED: dict[str, tuple[Path, list[dict]]] = {}


@pytest.fixture
def ddp_results(tmp_path_factory, prepared_moons, make_profile) -> tuple[Path, list[dict]]:
    """The 2 ranks' results (spawned once for this module)."""
    if "results" not in _SPAWNED:
        import torch.multiprocessing as mp

        root = tmp_path_factory.mktemp("ddp")
        (root / "data").symlink_to(prepared_moons)
        profile = make_profile(root)
        mp.spawn(_worker, args=(str(root / "store"), str(profile), str(root)), nprocs=WORLD_SIZE, join=True)
        _SPAWNED["results"] = root, [json.loads((root / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]
    return _SPAWNED["results"]


@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_one_ddp_step_gives_the_loss_and_gradients_of_one_process_on_the_whole_batch(ddp_results, name):
    _, results = ddp_results
    for rank, result in enumerate(results):
        assert not result["errors"], result["errors"]
        case = result["cases"][name]
        assert case["value_error"] < 1e-12, f"rank {rank}: loss value off by {case['value_error']:.3g}"
        assert case["gradient_error"] < 1e-12, f"rank {rank}: gradients off by {case['gradient_error']:.3g}"
    assert results[0]["cases"][name]["global_normalisers"] == ("legacy" not in name)


def test_without_global_normalisers_the_hkr_gradient_is_not_the_single_process_one(ddp_results):
    """What the reducer buys: an old-signature hKR plug-in normalises its class means over
    each shard, and its DDP gradient is measurably off (rank 0's shard has no positives)."""
    _, results = ddp_results
    assert results[0]["cases"]["legacy hkr"]["gradient_error"] > 1e-3


def test_rank_zero_alone_writes_the_outputs(ddp_results):
    root, results = ddp_results
    assert {path.name for path in (root / "out0").iterdir()} == {"weights.safetensors", "checkpoint.pt"}
    assert {path.name for path in (root / "metrics0").iterdir()} == {"metrics.json", "history.json"}
    assert not (root / "out1").exists() and not (root / "metrics1").exists()
    assert json.loads((root / "metrics0/metrics.json").read_text())["environment"]["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
    }
    assert [result["world_size"] for result in results] == [2, 2]


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(ddp_results):
    root, results = ddp_results
    messages = [result.get("diverged") for result in results]
    assert messages[0] == messages[1] and messages[0] is not None
    assert "at epoch 2, step 2; the last good checkpoint (epoch 1)" in messages[0]
    assert torch.load(root / "nan/checkpoint.pt", weights_only=True)["epoch"] == 1


def _train_command(params: Path, out: Path, metrics: Path) -> list[str]:
    return [
        "-m", "lipbench.cli.main", "train", "--params", str(params), "--dataset", "moons", "--model", "hkr",
        "--seed", "0", "--out", str(out), "--metrics", str(metrics), "--no-progress",
    ]  # fmt: skip


def _torchrun(params: Path, out: Path, metrics: Path) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD_SIZE)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*launcher, *_train_command(params, out, metrics)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=params.parent,
        timeout=120,
    )


def test_torchrun_trains_to_the_single_process_weights_and_resumes_its_checkpoints(tmp_path, prepared_moons, make_profile):
    (tmp_path / "data").symlink_to(prepared_moons)
    params = make_profile(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' threads (OMP_NUM_THREADS=1): a checkpoint resumes under its own threads only
    try:
        run_training(load_profile(params), RunKey("moons", "hkr", 0), tmp_path / "single", tmp_path / "single-m", progress=False)
    finally:
        torch.set_num_threads(threads)
    ddp = _torchrun(params, tmp_path / "ddp", tmp_path / "ddp-m")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("lipbench train: moons/hkr/seed0") == 1, ddp.stdout  # rank 0 alone reports
    assert {path.name for path in (tmp_path / "ddp").iterdir()} == {"weights.safetensors", "checkpoint.pt"}
    assert {path.name for path in (tmp_path / "ddp-m").iterdir()} == {"metrics.json", "history.json"}
    ours, theirs = load_file(tmp_path / "ddp/weights.safetensors"), load_file(tmp_path / "single/weights.safetensors")
    assert ours.keys() == theirs.keys()
    # The same batches, loss and gradient up to float summation order (per-rank partial
    # sums are added by the all-reduce): equal to rounding, after 9 Adam steps.
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], atol=2e-5, rtol=1e-5, msg=key)
    ddp_history = json.loads((tmp_path / "ddp-m/history.json").read_text())
    single_history = json.loads((tmp_path / "single-m/history.json").read_text())
    for a, b in zip(ddp_history, single_history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["train_accuracy_running"] == b["train_accuracy_running"]
    # Resuming the single-process checkpoint: every rank loads it (they must agree on the epoch).
    resumed = _torchrun(params, tmp_path / "single", tmp_path / "single-m")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((tmp_path / "single-m/metrics.json").read_text())
    assert metrics["timing"]["resumed_from_epoch"] == 3
    assert metrics["environment"]["distributed"]["world_size"] == 2
    reloaded = load_file(tmp_path / "single/weights.safetensors")
    assert all(torch.equal(reloaded[key], theirs[key]) for key in theirs)


class _Items(Dataset):
    """A dataset that is not tensor-backed (goes through a DataLoader)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("tensor_backed", [True, False])
def test_ranks_take_contiguous_shards_of_the_single_process_batches(world_size, tensor_backed):
    x = torch.arange(23.0)[:, None]
    y = torch.arange(23) % 2
    dataset = TensorDataset(x, y) if tensor_backed else _Items(x, y)
    device = torch.device("cpu")

    def batches(context=None):
        generator = torch.Generator().manual_seed(11)
        extra = () if context is None else (context,)
        return list(_batches(dataset, 10, generator, device, *extra))

    whole = batches()
    assert [len(b[1]) for b in whole] == [10, 10, 3]
    shards = [batches(DistributedContext(rank, world_size)) for rank in range(world_size)]
    for step, (bx, by, size) in enumerate(whole):
        parts = [shard[step] for shard in shards]
        assert all(part[2] == size for part in parts)  # every rank knows the global size
        assert torch.equal(torch.cat([part[0] for part in parts]), bx)
        assert torch.equal(torch.cat([part[1] for part in parts]), by)
        lengths = [len(part[1]) for part in parts]
        assert max(lengths) - min(lengths) <= 1
    assert [len(shard[-1][1]) for shard in shards] == {2: [2, 1], 3: [1, 1, 1], 4: [1, 1, 1, 0]}[world_size]


@pytest.mark.parametrize(
    "recipe, message",
    [
        ({"precision": "fp16"}, "precision must be one of fp32, bf16, got 'fp16'"),
        ({"precision": None}, "precision must be one of fp32, bf16"),
        ({"compile": "yes"}, "compile must be true or false, got 'yes'"),
        ({"compile": 1}, "compile must be true or false, got 1"),
    ],
)
def test_bad_speed_options_are_refused(tmp_path, make_profile, recipe, message):
    with pytest.raises(ValueError, match=message):
        config_from_profile(load_profile(make_profile(tmp_path, **recipe)), RunKey("moons", "hkr", 0))


def test_bf16_trains_with_fp32_weights_and_records_its_precision(tiny_profile, make_profile):
    root = tiny_profile.parent
    fp32 = run_training(load_profile(tiny_profile), RunKey("moons", "hkr", 0), root / "fp32", root / "fp32-m", progress=False)
    profile = load_profile(make_profile(root, precision="bf16"))
    bf16 = run_training(profile, RunKey("moons", "hkr", 0), root / "bf16", root / "bf16-m", progress=False)
    assert (bf16.recipe["precision"], bf16.recipe["compile"]) == ("bf16", False)
    assert (fp32.recipe["precision"], fp32.recipe["compile"]) == ("fp32", False)
    weights = load_file(root / "bf16/weights.safetensors")
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())
    # bf16 products round differently: close to the fp32 run, not equal to it.
    assert bf16.final_loss == pytest.approx(fp32.final_loss, rel=0.1)
    assert bf16.final_loss != fp32.final_loss
    assert bf16.test_accuracy > 0.6


@pytest.mark.slow
def test_compiled_training_matches_eager_training(tiny_profile, make_profile):
    root = tiny_profile.parent
    run_training(load_profile(tiny_profile), RunKey("moons", "hkr", 0), root / "eager", root / "eager-m", progress=False)
    profile = load_profile(make_profile(root, compile=True))
    compiled = run_training(profile, RunKey("moons", "hkr", 0), root / "compiled", root / "compiled-m", progress=False)
    assert compiled.recipe["compile"] is True
    a, b = load_file(root / "eager/weights.safetensors"), load_file(root / "compiled/weights.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5)
