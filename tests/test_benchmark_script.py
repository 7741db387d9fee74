"""The core benchmark script runs end to end (a smoke run; its timings are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RATIOS = {
    "train_lipbench_over_unconstrained",
    "train_lipbench_over_deel_torchlip",
    "train_deel_torchlip_over_unconstrained",
    "eval_exported_over_unconstrained",
    "eval_lipbench_eval_mode_over_unconstrained",
    "eval_deel_torchlip_eval_mode_over_unconstrained",
    "attack_lipbench_over_deel_torchlip",
    "attack_lipbench_over_unconstrained",
}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_core_speed_benchmark_writes_every_ratio(tmp_path: Path, precision: str) -> None:
    out = tmp_path / "speed.json"
    command = [sys.executable, str(ROOT / "benchmarks/core_speed.py"), "--batch-size", "4", "--rounds", "1"]
    command += ["--repeats", "1", "--precision", precision, "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    result = json.loads(out.read_text())
    assert result["precision"] == precision and result["batch_size"] == 4
    assert set(result["ratios"]) == RATIOS
    assert set(result["targets"]) <= RATIOS and set(result["targets_met"]) == set(result["targets"])
    assert set(result["attack_images_per_second_pgd10"]) == {"lipbench_exported", "deel_torchlip_exported", "unconstrained"}
    assert all(value > 0 for value in result["ratios"].values())
    assert result["environment"]["versions"]["torch"] == torch.__version__.split("+")[0]
