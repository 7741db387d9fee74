"""Carlini-Wagner L2 (Carlini & Wagner 2017) on a trained 1-Lipschitz digits model: as strong as
DeepFool in minimal norm with the quick profile's options, and never a fallback image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from lipbench.data import load_dataset, prepare_dataset, take_tensors
from lipbench.evaluate.attacks import ATTACKS
from lipbench.nn import export
from lipbench.train import resolve_train_config, train_model

ROOT = Path(__file__).resolve().parents[2]
QUICK = yaml.safe_load((ROOT / "params.yaml").read_text())
CW_OPTIONS = QUICK["evaluate"]["digits"]["attack_options"]["cw_l2"]


def _labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.fixture(scope="module")
def digits_hkr(tmp_path_factory, one_thread) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An hKR digits model (the quick profile's hKR parameters, 15 short epochs: ~4 s) and 60 test points."""
    data = tmp_path_factory.mktemp("digits")
    params = QUICK["prepare"]["digits"]
    prepare_dataset("digits", data, params)
    splits = load_dataset("digits", data, params)
    recipe = QUICK["train"]["digits"]["recipe"] | {"epochs": 15, "learning_rate": 0.01, "batch_size": 32}
    config = resolve_train_config("digits", "hkr", QUICK["train"]["digits"]["hkr"], recipe, 0, (1, 8, 8), 10)
    result = train_model(config, splits, torch.device("cpu"), progress=False)
    x, y = take_tensors(splits.test, 60)
    return export(result.model).eval(), x, y


def test_cw_is_at_least_as_strong_as_deepfool(digits_hkr):
    model, x, y = digits_hkr
    correct = _labels(model, x) == y
    assert correct.float().mean() > 0.8
    x, y = x[correct], y[correct]
    cw = ATTACKS.get("cw_l2")(model, x, y, [0.25], batch_size=64, options=CW_OPTIONS)
    deepfool = ATTACKS.get("deepfool_l2")(model, x, y, [0.25], batch_size=64)
    for res in (cw, deepfool):  # both verified: every finite norm is a misclassified point at that distance
        found = torch.from_numpy(np.isfinite(res.min_norm))
        assert (_labels(model, res.x_adv[found]) != y[found]).all()
        dist = (res.x_adv[found] - x[found]).flatten(1).norm(dim=1).double()
        np.testing.assert_allclose(dist.numpy(), res.min_norm[found.numpy()], rtol=1e-5)
    both = np.isfinite(cw.min_norm) & np.isfinite(deepfool.min_norm)
    assert both.mean() > 0.9 and np.isfinite(cw.min_norm).all()
    ratio = np.median(cw.min_norm[both]) / np.median(deepfool.min_norm[both])
    assert ratio <= 1.05, ratio
    assert np.all(cw.min_norm < 0.5 * x.flatten(1).norm(dim=1).numpy())  # nowhere near a black image


class _BrightIsZero(nn.Module):
    """Class 0 iff the mean pixel exceeds 0.05: every digit is class 0, the black image class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1).mean(dim=1, keepdim=True) - 0.05
        return torch.cat([score, -score], dim=1)


def test_nothing_found_is_inf_not_the_black_image(digits_hkr):
    _, x, _ = digits_hkr
    model = _BrightIsZero()
    y = torch.zeros(len(x), dtype=torch.long)
    assert (_labels(model, x) == 0).all() and _labels(model, torch.zeros_like(x[:1])).item() == 1
    tiny = {"steps": 3, "binary_search_steps": 1, "stepsize": 1e-4, "initial_const": 1e-3}
    res = ATTACKS.get("cw_l2")(model, x, y, [1.0, 100.0], options=tiny)
    assert np.isinf(res.min_norm).all()  # foolbox's C&W returned zeros here: "broken" at ||x||
    assert not res.success.any()
    torch.testing.assert_close(res.x_adv, x)  # the clean point, never a fallback image
    # with a budget, the same model is broken far closer than ||x|| (the black image)
    found = ATTACKS.get("cw_l2")(model, x[:8], y[:8], [1.0], options=CW_OPTIONS)
    assert np.isfinite(found.min_norm).all()
    assert np.all(found.min_norm < 0.9 * x[:8].flatten(1).norm(dim=1).numpy())


def test_results_do_not_depend_on_the_batch(digits_hkr):
    model, x, y = digits_hkr
    options = CW_OPTIONS | {"binary_search_steps": 2}
    whole = ATTACKS.get("cw_l2")(model, x[:12], y[:12], [0.5], batch_size=12, options=options)
    split = ATTACKS.get("cw_l2")(model, x[4:12], y[4:12], [0.5], batch_size=3, options=options)
    np.testing.assert_allclose(split.min_norm, whole.min_norm[4:], rtol=1e-4)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"step": 3}, "unknown option 'step' for attack 'cw_l2'; accepted options: abort_early, binary_search_steps"),
        ({"stepsize": 0}, "option 'stepsize' of attack 'cw_l2' must be > 0"),
        ({"initial_const": -1.0}, "option 'initial_const' of attack 'cw_l2' must be a finite number >= 0"),
        ({"steps": 0}, "option 'steps' of attack 'cw_l2' must be an integer >= 1"),
        ({"abort_early": "yes"}, "option 'abort_early' of attack 'cw_l2' must be a bool"),
    ],
)
def test_bad_options_are_one_value_error(options, match):
    with pytest.raises(ValueError, match=match):
        ATTACKS.get("cw_l2").resolve_options(options)
