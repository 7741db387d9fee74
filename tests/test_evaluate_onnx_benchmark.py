"""The ONNX end-to-end benchmark runs on a reduced protocol (timings are not asserted): it
exports a CNN with its card, ``lipbench evaluate`` turns it into a verified entry, and nothing
is written into the profile's own folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_evaluates_the_lenet_cnn_into_a_verified_entry(tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["paths"] = {key: str(tmp_path / "never" / key) for key in params["paths"]}  # the benchmark replaces them
    digits = params["evaluate"]["digits"]
    digits.update(certify_points=20, attack_points=8, deepfool_points=8, attacks=["fgm", "deepfool_l2"], attack_options={})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "result.json"
    command = [sys.executable, str(ROOT / "benchmarks/evaluate_onnx.py"), "--params", "params.yaml", "--models", "lenet"]
    result = subprocess.run([*command, "--steps", "200", "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(out.read_text())["models"]["lenet"]
    assert row["parameters"] == 98950
    assert row["multiply_adds"] == 16 * 64 * 9 + 32 * 16 * 16 * 9 + 512 * 180 + 180 * 10
    assert row["seconds"] > 0 and "verified" in row["summary"] and "digits/lenet" in row["summary"]
    assert not (tmp_path / "never").exists()
