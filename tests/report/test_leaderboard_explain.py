"""The leaderboard entry of each model carries its explain stage's figures."""

from __future__ import annotations

from pathlib import Path

from lipbench.profiles import load_profile


def test_leaderboard_entries_carry_the_explain_figures_of_their_model(fixture_params: Path) -> None:
    from lipbench.entries import validate_entry
    from lipbench.report.inputs import read_inputs
    from lipbench.report.leaderboard import collect_entries

    inputs = read_inputs(load_profile(fixture_params))
    entries = {(entry["dataset"], entry["model"]): entry for entry in collect_entries(inputs)}
    assert entries
    for key in inputs.keys():
        explain, entry = inputs.explain(key), entries[key.dataset, key.model]
        validate_entry(entry)
        assert entry["explain"]["points"] == explain.points
        assert entry["explain"]["mu_fidelity"] == explain.mu_fidelity
        assert entry["explain"]["alignment"] == dict(explain.alignment)
        assert entry["explain"]["counterfactual_violations"] == len(explain.counterfactual_violations)
