"""Leaderboard entries from typed summaries: same points, the accuracy ordering, provenance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from report_fixtures import write_model

from lipbench.entries import LeaderboardEntryError, accuracy_at, build_entry, validate_entry
from lipbench.methods import get_method
from lipbench.summaries import ModelDescription, Reference


def _description() -> ModelDescription:
    method = get_method("hkr")
    return ModelDescription("hkr", method.paper_name, method.kit, True, "digits_dense", Reference(**method.reference))


@pytest.fixture
def summaries(tmp_path: Path, report_data: Path, fixture_params: Path) -> dict:
    return write_model(fixture_params.parent, report_data, "digits", "hkr")


def _entry(summaries: dict, **attack_changes) -> dict:
    attack = dataclasses.replace(summaries["attack"], **attack_changes)
    return build_entry("fixture", _description(), summaries["certify"], attack, summaries["verify"])


def test_every_compared_accuracy_is_on_the_attack_points(summaries: dict) -> None:
    entry = _entry(summaries)
    attack, certify = summaries["attack"], summaries["certify"]
    validate_entry(entry)
    assert entry["points"] == {"attacked": attack.n_points, "certified": certify.points, "test": None}
    assert entry["clean_acc"] == attack.clean_accuracy
    assert [p["acc"] for p in entry["certified_acc"]] == attack.certified_accuracy
    assert [p["acc"] for p in entry["certified_acc_certify_points"]] == certify.certified_accuracy
    assert entry["autoattack_acc"] == accuracy_at(entry["per_attack_robust_acc"]["autoattack_l2"], entry["eps"])
    eps = entry["eps"]
    assert accuracy_at(entry["certified_acc"], eps) <= accuracy_at(entry["robust_acc"], eps) <= entry["clean_acc"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {"certified_accuracy": [1.0, 1.0]}, "certified 1.0000 > all attacks"),
        (lambda a: {"robust_accuracy": [a.clean_accuracy + 0.05] * 2}, "> clean"),
        (lambda a: {"per_attack_robust_accuracy": {**a.per_attack_robust_accuracy, "fgm": [1.0, 1.0]}}, "fgm 1.0000 > clean"),
    ],
)
def test_an_entry_whose_accuracies_contradict_each_other_is_refused(summaries: dict, change, message: str) -> None:
    with pytest.raises(LeaderboardEntryError, match="digits/hkr/seed0 refused: on the same 20 points") as error:
        _entry(summaries, **change(summaries["attack"]))
    assert message in str(error.value)


def test_summaries_of_different_runs_are_refused(summaries: dict) -> None:
    other = dataclasses.replace(summaries["verify"], model="kr")
    with pytest.raises(LeaderboardEntryError, match="belong to different runs"):
        build_entry("fixture", _description(), summaries["certify"], summaries["attack"], other)


def test_robustbench_fields_are_numbers_and_flags(summaries: dict) -> None:
    entry = build_entry("fixture", _description(), summaries["certify"], summaries["attack"], summaries["verify"], reported=0.97)
    assert (entry["reported"], entry["number_forward_passes"], entry["unreliable"]) == (0.97, 1, False)
    failed = dataclasses.replace(summaries["verify"], status="failed", failures=["x"])
    assert build_entry("fixture", _description(), summaries["certify"], summaries["attack"], failed)["unreliable"]
    assert _entry(summaries, precision="bf16")["unreliable"]  # weaker attacks may overestimate robustness
    assert _entry(summaries)["reported"] is None


def test_attack_precision_is_recorded_and_bf16_is_footnoted(summaries: dict) -> None:
    fp32 = _entry(summaries, precision="fp32", compiled=False)
    bf16 = _entry(summaries, precision="bf16", compiled=True)
    for entry in (fp32, bf16):
        validate_entry(entry)
    assert (fp32["environment"]["attack_precision"], fp32["environment"]["attack_compiled"]) == ("fp32", False)
    assert (bf16["environment"]["attack_precision"], bf16["environment"]["attack_compiled"]) == ("bf16", True)
    assert "bf16" not in fp32["footnote"]
    assert "attacks searched in bf16 (hits re-checked in fp32)" in bf16["footnote"]
