"""Records DVC does not restore: a stage restored from DVC's run-cache gets its outputs back,
not the git-tracked record beside them. The report rewrites evaluation records from the
outputs' summaries, replaces a training record of another run by the stored record of the
restored weights, and refuses one it has no record for."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from lipbench.profiles import load_profile
from lipbench.report.freshness import StaleRecordError, record_store, refresh_stage_records, refresh_train_records
from lipbench.runs import Layout, RunKey
from lipbench.summaries import CertifySummary, StageMetrics, TrainSummary, read_summary, write_summary


def test_records_that_agree_with_the_outputs_are_left_alone(fixture_params: Path) -> None:
    profile = load_profile(fixture_params)
    path = Layout.of(profile).stage_metrics("certify", "digits")
    before = path.read_bytes()
    assert refresh_stage_records(profile) == []
    assert refresh_train_records(profile) == []
    assert path.read_bytes() == before


def test_an_evaluation_record_of_another_run_is_rewritten_from_the_restored_outputs(fixture_params: Path) -> None:
    profile = load_profile(fixture_params)
    layout = Layout.of(profile)
    key = RunKey("digits", "hkr", 0)
    # What a run-cache restore leaves: the output folder holds another run's summary
    # (other weights: another fingerprint and accuracy); the tracked record is the old one.
    restored = dataclasses.replace(
        read_summary(layout.stage_summary("certify", key), CertifySummary), fingerprint="another-run", clean_accuracy=0.123
    )
    write_summary(layout.stage_summary("certify", key), restored)
    notes = refresh_stage_records(profile)
    path = layout.stage_metrics("certify", "digits")
    assert notes == [f"{path} described other outputs (DVC restored the stage from its run-cache): rewritten from them"]
    rewritten = StageMetrics.read(layout.stage_metrics("certify", "digits"))
    assert rewritten.summary(key).clean_accuracy == 0.123 and rewritten.summary(key).fingerprint == "another-run"
    assert rewritten.recomputed == []
    assert rewritten.seconds == pytest.approx(sum(s.seconds for s in rewritten.summaries.values()))
    assert refresh_stage_records(profile) == []  # now they agree


def _set_params(params_path: Path, change) -> None:
    params = yaml.safe_load(params_path.read_text())
    change(params)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_a_training_record_of_other_parameters_is_refused_with_the_stage_to_rerun(fixture_params: Path) -> None:
    def change(params: dict) -> None:  # e.g. `dvc exp run -S train.moons.hkr.alpha=10`, restored
        params["train"]["moons"]["hkr"]["alpha"] = 10.0
        params["train"]["digits"]["recipe"]["epochs"] = 5

    _set_params(fixture_params, change)
    with pytest.raises(StaleRecordError) as caught:
        refresh_train_records(load_profile(fixture_params))
    message = str(caught.value)
    assert "seed0/metrics.json describes another run than the profile's (alpha: params 10.0, record 50.0)" in message
    assert f"`dvc repro --force {fixture_params.parent / 'dvc.yaml'}:train@moons`" in message


def test_a_variant_names_its_method_and_is_checked_against_the_recorded_method(fixture_params: Path) -> None:
    profile = load_profile(fixture_params)
    record = Layout.of(profile).train_summary(RunKey("moons", "hkr", 0))
    _set_params(fixture_params, lambda params: params["train"]["moons"]["hkr"].update(method="hkr"))
    assert refresh_train_records(load_profile(fixture_params)) == []  # `method: hkr` is the record's method
    write_summary(record, dataclasses.replace(read_summary(record, TrainSummary), method="kr"))
    with pytest.raises(StaleRecordError, match="method: params 'hkr', record 'kr'"):
        refresh_train_records(load_profile(fixture_params))


def test_a_training_record_of_other_weights_is_replaced_by_the_stored_record_of_the_restored_ones(
    fixture_params: Path,
) -> None:
    profile = load_profile(fixture_params)
    layout = Layout.of(profile)
    key = RunKey("moons", "hkr", 0)
    record, history = layout.train_summary(key), layout.train_history(key)
    # A run with alpha 10 (weights b"alpha 10") is published, so the report stores its record.
    _set_params(fixture_params, lambda params: params["train"]["moons"]["hkr"].update(alpha=10.0))
    layout.weights(key).parent.mkdir(parents=True, exist_ok=True)
    layout.weights(key).write_bytes(b"alpha 10")
    summary = read_summary(record, TrainSummary)
    write_summary(record, dataclasses.replace(summary, method_params={**summary.method_params, "alpha": 10.0}, test_accuracy=0.5))
    history.write_text('[{"epoch": 1, "train_loss": 9.0, "test_accuracy": 0.5}]')
    assert refresh_train_records(load_profile(fixture_params)) == []
    stored = record_store(load_profile(fixture_params), layout, key)
    assert stored is not None and (stored / "metrics.json").read_bytes() == record.read_bytes()
    # Back to alpha 50, then alpha 10 again, restored from the run-cache: weights of alpha 10,
    # the git-tracked record of alpha 50.
    write_summary(record, summary)
    history.write_text("[]")
    notes = refresh_train_records(load_profile(fixture_params))
    assert notes == [f"{record} described another run (DVC restored the stage from its run-cache): replaced by {stored}"]
    assert read_summary(record, TrainSummary).test_accuracy == 0.5
    assert "train_loss" in history.read_text()
    layout.weights(key).write_bytes(b"other weights, never published")  # no stored record: refused
    write_summary(record, summary)
    with pytest.raises(StaleRecordError, match="never published the record of the restored weights"):
        refresh_train_records(load_profile(fixture_params))


def test_the_report_stage_rewrites_before_it_reads(fixture_params: Path, tmp_path: Path) -> None:
    from lipbench.report.build import build_report

    profile = load_profile(fixture_params)
    layout = Layout.of(profile)
    key = RunKey("moons", "hkr", 0)
    restored = dataclasses.replace(read_summary(layout.stage_summary("certify", key), CertifySummary), fingerprint="another-run")
    write_summary(layout.stage_summary("certify", key), restored)
    build_report(profile, cwd=tmp_path, progress=False)
    record = json.loads(layout.stage_metrics("certify", "moons").read_text())
    assert record["models"]["hkr"]["seed0"]["fingerprint"] == "another-run"
