"""The families speed benchmark runs end to end with tiny sizes (timings are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lipbench.nn.families import get_family, list_families

ROOT = Path(__file__).resolve().parents[1]


def test_families_speed_benchmark_reports_every_conv_family(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    command = [sys.executable, str(ROOT / "benchmarks/families_speed.py"), "--channels", "4", "--size", "8"]
    command += ["--batch-size", "2", "--repeats", "1", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    families = json.loads(out.read_text())["families"]
    assert set(families) == {name for name in list_families() if get_family(name).conv is not None}
    for row in families.values():
        assert row["constrained_s"] > 0 and row["twin_s"] > 0 and row["ratio_over_twin"] > 0
        assert row["saved_mb"] > 0 and row["twin_saved_mb"] > 0
    assert "ratio_over_orthogonium_raw" in families["aoc"] and "ratio_over_orthogonium_raw" in families["bcop"]
    assert families["aol"]["ratio_over_orthogonium"] > 0 and families["sll"]["ratio_over_orthogonium"] > 0


def test_saved_for_backward_bytes_counts_each_kept_tensor_once() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("families_speed", ROOT / "benchmarks/families_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch

    linear = torch.nn.Linear(10, 3, bias=False)
    x = torch.randn(4, 10)
    # y = x W^T keeps x (4 x 10 floats); square keeps y (4 x 3); mean keeps nothing
    assert module.saved_for_backward_bytes(linear, x) == 4 * (4 * 10 + 4 * 3)


def test_train_step_seconds_lets_the_variants_take_turns_step_by_step() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("families_speed", ROOT / "benchmarks/families_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch

    order: list[str] = []
    models = {name: torch.nn.Linear(3, 2) for name in ("a", "b", "c")}
    for name, model in models.items():
        model.register_forward_hook(lambda *_, name=name: order.append(name))
    seconds = module.train_step_seconds(models, torch.randn(4, 3), repeats=3)
    assert order == ["a", "b", "c"] * 4  # one warm-up round, then 3 timed rounds, round robin
    assert set(seconds) == {"a", "b", "c"} and all(value > 0 for value in seconds.values())
