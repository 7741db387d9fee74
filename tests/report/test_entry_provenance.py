"""Leaderboard entries say how the attacks searched (bf16 attacks are flagged, never hidden)."""

from __future__ import annotations

from pathlib import Path

from report_fixtures import write_model

from lipbench.report.leaderboard import build_entry, validate_entry


def _entry(summaries: dict, **attack_changes) -> dict:
    return build_entry(
        "fixture", "digits", "hkr", 0, "hkr", "digits_dense", 0.25, None,
        summaries["certify"], summaries["attack"] | attack_changes, summaries["verify"],
    )  # fmt: skip


def test_attack_precision_is_recorded_and_bf16_is_footnoted(tmp_path: Path, report_data: Path) -> None:
    summaries = write_model(tmp_path, report_data, "digits", "hkr")
    legacy = _entry(summaries)  # summaries written before the option existed: fp32
    fp32 = _entry(summaries, precision="fp32", compiled=False)
    bf16 = _entry(summaries, precision="bf16", compiled=True)
    for entry in (legacy, fp32, bf16):
        validate_entry(entry)
    assert legacy["environment"] == fp32["environment"]
    assert (fp32["environment"]["attack_precision"], fp32["environment"]["attack_compiled"]) == ("fp32", False)
    assert (bf16["environment"]["attack_precision"], bf16["environment"]["attack_compiled"]) == ("bf16", True)
    assert "bf16" not in fp32["footnote"]
    assert "attacks searched in bf16 (hits re-checked in fp32)" in bf16["footnote"]
