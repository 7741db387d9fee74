"""Leaderboard entries: schema validation, ranking and flagging of failed verification."""

from __future__ import annotations

import copy
import re

import pytest

from lipbench.entries import LeaderboardEntryError, validate_entry
from lipbench.report.leaderboard import _html, _markdown, rank


def entry(name: str, certified: float, autoattack: float, status: str = "verified", dataset: str = "digits") -> dict:
    curve = [{"eps": 0.1, "acc": certified + 0.1}, {"eps": 0.25, "acc": certified}]
    return {
        "name": name,
        "link": "",
        "authors": "",
        "venue": "",
        "architecture": "digits_dense (gnp)",
        "dataset": dataset,
        "threat_model": "L2",
        "eps": 0.25,
        "clean_acc": 0.97,
        "test_acc": 0.975,
        "autoattack_acc": autoattack,
        "reported": None,
        "number_forward_passes": 1,
        "unreliable": status != "verified",
        "additional_data": False,
        "footnote": "" if status == "verified" else "FAILED verification",
        "model": name,
        "method": "hkr",
        "seed": 0,
        "profile": "quick",
        "constrained": True,
        "certified_acc": curve,
        "certified_acc_certify_points": curve,
        "robust_acc": curve,
        "per_attack_robust_acc": {"autoattack_l2": curve},
        "points": {"attacked": 200, "certified": 450, "test": 450},
        "lipschitz": {"upper_whole_map": 1.2, "upper_max_per_logit": 1.0, "lower_whole_map": 1.1, "lower_max_per_logit": 0.9},
        "verification": {"status": status, "failures": [] if status == "verified" else ["lower bound 2 > upper 1"]},
        "train_seconds": 1.5,
        "peak_memory_mb": 600.0,
        "parameter_count": 17226,
        "environment": {"git_commit": "abc"},
    }


def test_a_valid_entry_passes():
    validate_entry(entry("hkr", 0.7, 0.8))


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda e: e.update(clean_acc=1.5), "clean_acc"),
        (lambda e: e.update(eps="0.25"), "eps"),
        (lambda e: e.pop("authors"), "the entry"),
        (lambda e: e["certified_acc"][1].update(acc=-0.1), "certified_acc[1].acc"),
        (lambda e: e["verification"].update(status="maybe"), "verification.status"),
        (lambda e: e.update(threat_model="Linf"), "threat_model"),
        (lambda e: e.update(extra_field=1), "the entry"),
        (lambda e: e.update(parameter_count=3.5), "parameter_count"),
        (lambda e: e["points"].pop("attacked"), "points"),
        (lambda e: e.update(reported="98.5"), "reported"),
        (lambda e: e.update(number_forward_passes=0), "number_forward_passes"),
        (lambda e: e.update(unreliable="no"), "unreliable"),
    ],
)
def test_invalid_entries_are_rejected_naming_the_field(change, field):
    bad = copy.deepcopy(entry("hkr", 0.7, 0.8))
    change(bad)
    where = field if field == "the entry" else f"field {field!r}"
    with pytest.raises(LeaderboardEntryError, match=re.escape(f"leaderboard entry 'hkr': {where}")):
        validate_entry(bad)


def test_ranking_by_certified_then_autoattack_and_failed_entries_never_above_verified():
    entries = [
        entry("b", 0.6, 0.9),
        entry("a", 0.7, 0.8),
        entry("c", 0.6, 0.95),
        entry("cheat", 0.99, 0.99, status="failed"),
        entry("moon", 0.5, 0.5, dataset="moons"),
    ]
    ranked = rank(entries)
    assert list(ranked) == ["digits", "moons"]
    assert [e["name"] for e in ranked["digits"]] == ["a", "c", "b", "cheat"]
    markdown = _markdown(ranked, "quick")
    assert "| 4 | cheat (seed 0) |" in markdown and "**FAILED**" in markdown
    assert "<tr class='failed'" in _html(ranked, "quick")


def test_scores_round_lipschitz_bounds_outward_so_they_stay_bounds():
    import random

    from lipbench.report.leaderboard import outward

    assert outward(1.0000005351504606, upward=True) == 1.0001  # float noise above 1 is not a change
    assert outward(1.0000008499051414, upward=True) == 1.0001
    assert outward(0.9874857068061829, upward=False) == 0.98748
    assert outward(43.393879726142295, upward=True) == 43.394 and outward(1.0, upward=True) == 1.0
    assert outward(0.0, upward=True) == 0.0 and outward(float("inf"), upward=False) == float("inf")
    generator = random.Random(0)
    for _ in range(2000):
        value = 10 ** generator.uniform(-3, 3)
        upper, lower = outward(value, upward=True), outward(value, upward=False)
        assert lower <= value <= upper, value
        assert upper - lower <= 1.01e-4 * value, value  # 5 significant digits
