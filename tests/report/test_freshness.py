"""Records DVC does not restore: a stage restored from DVC's run-cache gets its outputs back,
not the git-tracked record beside them. The report rewrites evaluation records from the
outputs' summaries and refuses training records that describe another run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from lipbench.profiles import load_profile
from lipbench.report.freshness import StaleRecordError, check_train_records, refresh_stage_records
from lipbench.runs import Layout, RunKey
from lipbench.summaries import CertifySummary, StageMetrics, read_summary, write_summary


def test_records_that_agree_with_the_outputs_are_left_alone(fixture_params: Path) -> None:
    profile = load_profile(fixture_params)
    path = Layout.of(profile).stage_metrics("certify", "digits")
    before = path.read_bytes()
    assert refresh_stage_records(profile) == []
    check_train_records(profile)
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


def test_a_training_record_of_other_parameters_is_refused_with_the_stage_to_rerun(fixture_params: Path) -> None:
    params = yaml.safe_load(fixture_params.read_text())
    params["train"]["moons"]["hkr"]["alpha"] = 10.0  # e.g. `dvc exp run -S train.moons.hkr.alpha=10`, restored
    params["train"]["digits"]["recipe"]["epochs"] = 5
    fixture_params.write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(StaleRecordError) as caught:
        check_train_records(load_profile(fixture_params))
    message = str(caught.value)
    assert "seed0/metrics.json (alpha: params 10.0, record 50.0)" in message
    assert f"dvc repro --force {fixture_params.parent / 'dvc.yaml'}:train@moons-hkr-0" in message
    assert message.count("epochs: params 5, record 3") == len(params["models"])  # every digits model
    assert "train@moons-standard-0" not in message


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
