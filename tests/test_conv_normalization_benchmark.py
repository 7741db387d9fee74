"""The conv normalisation benchmark runs end to end (a smoke run on digits; no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_conv_normalization_benchmark_writes_both_corrections(tmp_path: Path) -> None:
    out = tmp_path / "conv_normalization.json"
    command = [sys.executable, str(ROOT / "benchmarks/conv_normalization.py"), "--data-dir", str(tmp_path / "none")]
    command += ["--steps", "3", "--batch-size", "16", "--eval-points", "40", "--cost-architectures", "mnist_cnn"]
    command += ["--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    result = json.loads(out.read_text())
    assert result["dataset"] == "digits" and set(result["results"]) == {"strict", "exact"}
    exact = result["results"]["exact"]
    assert all(bound <= 1 + 1e-4 for bound in exact["conv_bounds"] + exact["conv_bounds_at_initialisation"])
    assert set(exact["certified_accuracy"]) == {str(eps) for eps in result["epsilons"]}
    assert result["exact_over_strict_seconds_per_step"] > 0
    assert len(result["exact_normaliser_seconds"]["mnist_cnn (1x28x28)"]) == 2
