"""The adversarial-example figure shows, per model and point, the closest verified adversarial
example of any attack (named, with its distance) and marks unbroken points; the saliency
figure has a colour bar."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.collections import QuadMesh
from report_fixtures import EPS_ATTACKS

from lipbench.arrays import AttackArrays
from lipbench.profiles import load_profile
from lipbench.report import images, plotting
from lipbench.report.inputs import load_test_inputs, read_inputs
from lipbench.report.labels import ATTACK_LABELS
from lipbench.runs import Layout, RunKey

KEY = RunKey("digits", "standard", 0)


@pytest.fixture(autouse=True)
def _agg() -> None:
    """Render off-screen (matplotlib Agg), whatever the default backend."""
    matplotlib.use("Agg")


def _direction(shape: tuple[int, ...], seed: int) -> np.ndarray:
    u = np.random.default_rng(seed).normal(size=shape)
    return u / np.linalg.norm(u)


def _controlled(params: Path) -> dict[int, tuple[str, float] | str]:
    """Rewrite the standard digits model's examples: slot 0 closest by PGD (at its 2nd eps),
    slot 1 by C&W, slot 2 broken by nothing, slot 3 misclassified; returns what each should show."""
    path = Layout.of(load_profile(params)).stage_arrays("attack", KEY)
    arrays = AttackArrays.load(path)
    x, _, _ = load_test_inputs(load_profile(params), "digits", 16)
    for examples in arrays.examples.values():
        examples[...] = np.nan
    u = _direction(x.shape[1:], 0)
    for name, distance in (("cw_l2", 0.5), ("deepfool_l2", 0.6), ("fgm", 0.4)):
        target = arrays.examples[name][0] if name in EPS_ATTACKS else arrays.examples[name]
        target[0] = x[0] + distance * u
    arrays.examples["pgd_l2"][1, 0] = x[0] + 0.3 * u  # the smallest, at the larger eps
    arrays.examples["cw_l2"][1] = x[1] + 0.7 * u
    arrays.examples["autoattack_l2"][:, 1] = x[1] + 0.9 * u
    arrays.examples["deepfool_l2"][1] = x[1] + 1.1 * u
    arrays.clean_correct[:4] = [True, True, True, False]
    arrays.robust[:, 3] = False
    arrays.examples["cw_l2"][3] = x[3] + 0.1 * u  # ignored: the clean point is already wrong
    arrays.save(path)
    return {0: ("pgd_l2", 0.3), 1: ("cw_l2", 0.7), 2: images.NOT_BROKEN, 3: images.MISCLASSIFIED}


def _columns(rows: list[images.ImageRow], x: np.ndarray) -> list[int]:
    """The test index shown in each column (found from the clean row's images)."""
    return [int(np.argmin([np.abs(x_i - image).max() for x_i in x])) for image in rows[0].images]


def _brute_force(arrays: AttackArrays, slot: int, clean: np.ndarray) -> tuple[str, float] | None:
    found = []
    for name in arrays.attacks:
        stack = arrays.examples[name][:, slot] if name in EPS_ATTACKS else arrays.examples[name][slot][None]
        found += [(float(np.linalg.norm(e.astype(np.float64) - clean)), name) for e in stack if not np.isnan(e).any()]
    return None if not found else min(found, key=lambda pair: pair[0])[::-1]


def test_each_cell_is_the_closest_example_of_any_attack(fixture_params: Path) -> None:
    expected = _controlled(fixture_params)
    profile = load_profile(fixture_params)
    inputs = read_inputs(profile)
    rows, _ = images.adversarial_rows(inputs, "digits", columns=16)
    x, _, _ = load_test_inputs(profile, "digits", 16)
    columns = _columns(rows, x)
    assert sorted(columns) == list(range(16))
    assert len(rows) == 1 + len(profile.models) + 1  # clean, every model, the hKR transport
    for model, row in zip(profile.models, rows[1:]):
        arrays = inputs.attack_arrays(RunKey("digits", model, 0))
        for column, index in enumerate(columns):
            image, caption = row.images[column], row.captions[column]
            best = _brute_force(arrays, index, x[index].astype(np.float64))
            if not arrays.clean_correct[index]:
                assert (image, caption) == (None, images.MISCLASSIFIED)
            elif best is None:
                assert (image, caption) == (None, images.NOT_BROKEN)
            else:
                assert caption == f"{ATTACK_LABELS[best[0]]} {best[1]:.2f}", (model, index)
                assert np.linalg.norm(image.astype(np.float64) - x[index]) == pytest.approx(best[1])
            if model == KEY.model and index in expected:
                want = expected[index]
                assert caption == (want if isinstance(want, str) else f"{ATTACK_LABELS[want[0]]} {want[1]:.2f}")


def test_smallest_adversarial_names_the_attack(fixture_params: Path) -> None:
    _controlled(fixture_params)
    profile = load_profile(fixture_params)
    arrays = read_inputs(profile).attack_arrays(KEY)
    x, _, _ = load_test_inputs(profile, "digits", 2)
    pgd = images.smallest_adversarial(arrays, 0, x[0].astype(np.float64))
    assert (pgd.attack, round(pgd.distance, 6), pgd.caption) == ("pgd_l2", 0.3, "PGD 0.30")
    np.testing.assert_array_equal(pgd.image, arrays.examples["pgd_l2"][1, 0])
    assert images.smallest_adversarial(arrays, 2, x[0]).caption == "not broken (all attacks)"


def _saved_bytes(fig, folder: Path) -> bytes:
    return plotting.save_figure(fig, folder, "figure", formats=("png",))[0].read_bytes()


def test_figures_render_marked_cells_and_a_gradient_colour_bar(fixture_params: Path, tmp_path: Path) -> None:
    _controlled(fixture_params)
    inputs = read_inputs(load_profile(fixture_params))
    rows, bounds = images.adversarial_rows(inputs, "digits", columns=16)
    fig = images.image_grid_figure("adversarial", rows, bounds)
    model_row = 1 + inputs.profile.models.index(KEY.model)
    axes = np.array([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]).reshape(len(rows), -1)
    for column, caption in enumerate(rows[model_row].captions):
        ax = axes[model_row, column]
        assert ax.get_xlabel() == caption
        if caption in (images.NOT_BROKEN, images.MISCLASSIFIED):  # hatched, never a blank cell
            assert not ax.images and any(patch.get_hatch() for patch in ax.patches)
        else:
            assert len(ax.images) == 1
    assert not [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]  # no gradients here
    first = _saved_bytes(fig, tmp_path / "a")
    again = _saved_bytes(images.image_grid_figure("adversarial", rows, bounds), tmp_path / "b")
    assert first == again  # byte-reproducible

    rows, bounds = images.saliency_rows(inputs, "digits")
    assert any(row.kind == "gradient" for row in rows)
    fig = images.image_grid_figure("saliency", rows, bounds)
    (bar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert bar.get_ylabel() == images.GRADIENT_LABEL
    assert [c.get_cmap().name for c in bar.collections if isinstance(c, QuadMesh)] == ["RdBu_r"]  # diverging
    assert bar.get_ylim() == (-1.0, 1.0)
    assert _saved_bytes(fig, tmp_path / "c")
