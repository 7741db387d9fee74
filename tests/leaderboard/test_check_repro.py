"""check-repro: fresh metrics against the committed ones, within tolerances."""

from __future__ import annotations

import json
import subprocess

from lipbench.report.check_repro import compare_metrics, compare_values, format_table

COMMITTED = {
    "test_accuracy": 0.9711,
    "certified_accuracy": [0.918, 0.736],
    "lipschitz_upper_bound": {"whole_map": 1.4300},
    "parameter_count": 17226,
    "status": "verified",
    "timing": {"train_seconds": 1.8},
}


def test_values_within_tolerance_match_and_timings_are_ignored():
    fresh = json.loads(json.dumps(COMMITTED))
    fresh["test_accuracy"] = 0.9680  # within 0.02
    fresh["lipschitz_upper_bound"]["whole_map"] = 1.4301  # within 1e-3 relative
    fresh["timing"]["train_seconds"] = 99.0
    assert all(row.ok for row in compare_values("m.json", COMMITTED, fresh))


def test_changed_numbers_are_flagged():
    fresh = json.loads(json.dumps(COMMITTED))
    fresh["certified_accuracy"][1] = 0.70
    fresh["lipschitz_upper_bound"]["whole_map"] = 1.50
    fresh["parameter_count"] = 17227
    fresh["status"] = "failed"
    bad = {row.key for row in compare_values("m.json", COMMITTED, fresh) if not row.ok}
    assert bad == {"certified_accuracy[1]", "lipschitz_upper_bound.whole_map", "parameter_count", "status"}


def test_compare_metrics_reads_the_committed_files_from_git(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    metrics = tmp_path / "reports" / "metrics"
    metrics.mkdir(parents=True)
    (metrics / "a.json").write_text(json.dumps(COMMITTED))
    git("add", "-A")
    git("commit", "-qm", "reference")
    changed = json.loads(json.dumps(COMMITTED)) | {"test_accuracy": 0.80}
    (metrics / "a.json").write_text(json.dumps(changed))
    (metrics / "new.json").write_text("{}")
    rows = compare_metrics(metrics)
    table = format_table(rows, only_mismatches=True)
    assert "| MISMATCH |" in table and "test_accuracy | 0.9711 | 0.8 | abs 0.02 |" in table
    assert "<not committed>" in table
    assert "do not." in table.splitlines()[-1]
