"""A training's peak memory is its own, also in a process that allocated more before it (a
train stage's worker trains several models in turn)."""

from __future__ import annotations

import numpy as np

from lipbench.profiles import load_profile
from lipbench.runs import RunKey
from lipbench.train import run_training
from lipbench.train.memory import peak_rss_mb, reset_peak_rss


def _touch_megabytes(megabytes: int) -> None:
    block = np.ones(megabytes * 2**20 // 8)  # written: resident
    assert block.sum() > 0


def test_the_high_water_mark_resets_to_what_is_resident():
    _touch_megabytes(400)
    before = peak_rss_mb()
    assert reset_peak_rss()  # Linux (CI and every profile's machine so far)
    assert peak_rss_mb() < before - 300


def test_a_training_records_its_own_peak_not_an_earlier_allocation(tiny_profile):
    _touch_megabytes(800)
    earlier = peak_rss_mb()
    summary = run_training(load_profile(tiny_profile), RunKey("moons", "hkr", 0), tiny_profile.parent / "out", progress=False)
    assert 0 < summary.peak_memory_mb["process_rss"] < earlier - 300
