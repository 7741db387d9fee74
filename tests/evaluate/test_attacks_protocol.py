"""The combined protocol: pruning is exact and cheaper, errors come before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lipbench.evaluate.attacks import BinaryAsTwoLogits, accuracy_from_min_norms, run_attack_suite
from lipbench.registry import RegistryError

EPS = [0.0, 0.15, 0.3, 0.45, 1.0]
ATTACK_LIST = ["fgm", "pgd_l2", "cw_l2", "deepfool_l2"]
OPTIONS = {"pgd_l2": {"steps": 20, "rel_stepsize": 0.1}, "cw_l2": {"steps": 100, "binary_search_steps": 6}}


@pytest.fixture(scope="module")
def pruned_and_unpruned(toy10):
    runs = [
        run_attack_suite(
            toy10.model,
            toy10.x,
            toy10.y,
            EPS,
            ATTACK_LIST,
            toy10.radius,
            batch_size=8,
            options=OPTIONS,
            prune=prune,
            progress=False,
            n_examples=4,
        )
        for prune in (True, False)
    ]
    return toy10, *runs


def test_pruning_is_exact_and_saves_calls(pruned_and_unpruned):
    _, pruned, full = pruned_and_unpruned
    correct = pruned.clean_correct
    assert 0 < correct.sum() < len(correct)  # both pruning reasons occur
    assert pruned.certified[1].sum() > 0 and not pruned.certified[-1].all()
    np.testing.assert_array_equal(pruned.robust_accuracy, full.robust_accuracy)
    np.testing.assert_array_equal(pruned.robust, full.robust)
    for name in ATTACK_LIST:
        np.testing.assert_array_equal(pruned.success[name], full.success[name])
    for name in ("cw_l2", "deepfool_l2"):
        np.testing.assert_array_equal(pruned.min_norms[name], full.min_norms[name])
    assert full.calls == full.calls_unpruned and full.calls_saved == 0
    assert sum(pruned.calls.values()) < sum(full.calls.values())
    for name in ("fgm", "pgd_l2"):
        # pruned: only correct, uncertified points at eps > 0 are attacked
        expected = sum(int((correct & ~pruned.certified[e]).sum()) for e in range(1, len(EPS)))
        assert pruned.calls[name] == expected < full.calls[name] == len(correct) * len(EPS)
    assert pruned.calls["cw_l2"] == full.calls["cw_l2"] == correct.sum()  # not eps-based: never pruned
    assert not full.certificate_violations.any()  # the certificates are valid


def test_combined_result_is_pointwise_worst_case(pruned_and_unpruned):
    _, res, _ = pruned_and_unpruned
    broken = np.zeros_like(res.robust)
    for name in ATTACK_LIST:
        assert not res.success[name][:, ~res.clean_correct].any()  # only correct points are "broken"
        broken |= res.success[name]
    np.testing.assert_array_equal(res.robust, res.clean_correct & ~broken)
    assert res.robust_accuracy[0] == res.clean_accuracy
    assert np.all(np.diff(res.robust_accuracy) <= 0) and res.robust_accuracy[-1] < res.clean_accuracy
    assert np.all(res.certified_accuracy <= res.robust_accuracy)  # certified points are never broken
    assert np.all(res.min_norm <= res.min_norms["deepfool_l2"]) and np.all(res.min_norm[~res.clean_correct] == 0)
    assert np.all(accuracy_from_min_norms(res.min_norm, EPS) >= res.robust_accuracy)


def test_examples_are_the_first_points(pruned_and_unpruned):
    toy, res, _ = pruned_and_unpruned
    assert list(res.example_indices) == [0, 1, 2, 3]
    fgm = res.examples["fgm"]
    assert fgm.shape == (len(EPS), 4, 1, 8, 8)
    for e, eps in enumerate(EPS):
        has = ~np.isnan(fgm[e]).any(axis=(1, 2, 3))
        np.testing.assert_array_equal(has, res.success["fgm"][e, :4])
        if has.any():
            x_adv = torch.from_numpy(fgm[e][has])
            assert ((x_adv - toy.x[:4][has]).flatten(1).norm(dim=1) <= eps * 1.000001).all()
            assert (toy.model(x_adv).argmax(1) != toy.y[:4][has]).all()
    cw = res.examples["cw_l2"]
    assert cw.shape == (4, 1, 8, 8)
    found = ~np.isnan(cw).any(axis=(1, 2, 3))
    np.testing.assert_array_equal(found, np.isfinite(res.min_norms["cw_l2"][:4]) & res.clean_correct[:4])
    json.dumps(res.summary())  # serialisable as is


def test_binary_single_logit_model(toy_binary):
    res = run_attack_suite(
        toy_binary.model, toy_binary.x, toy_binary.y, [0.2, 1.5], ["fgm", "deepfool_l2"], toy_binary.radius, progress=False
    )
    assert res.robust_accuracy[1] < res.robust_accuracy[0] <= res.clean_accuracy
    f = torch.tensor([[-1.0], [0.0], [2.5]])
    logits = BinaryAsTwoLogits(nn.Identity())(f)
    assert logits.argmax(1).tolist() == [0, 0, 1]  # argmax == (f > 0), ties go to class 0
    torch.testing.assert_close(logits[:, 1] - logits[:, 0], f[:, 0])


def test_model_state_is_restored(toy10):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).train()
    run_attack_suite(model, toy10.x[:4], toy10.y[:4], [0.1], ["fgm"], progress=False)
    assert model.training and all(p.requires_grad for p in model.parameters())


_G = torch.Generator().manual_seed(0)
X, Y, R = torch.rand(6, 1, 8, 8, generator=_G), torch.arange(6), torch.full((6,), 0.2)
BAD_CASES = {
    "unknown attack": (
        RegistryError,
        "known attacks: autoattack_l2, cw_l2, deepfool_l2, fgm, pgd_l2",
        dict(epsilons=[0.1], attacks=["fgm", "fgsm"]),
    ),
    "negative eps": (ValueError, "epsilons must be finite and >= 0", dict(epsilons=[0.1, -0.1])),
    "nan eps": (ValueError, "epsilons must be finite and >= 0", dict(epsilons=[float("nan")])),
    "inf eps": (ValueError, "epsilons must be finite and >= 0", dict(epsilons=[float("inf")])),
    "x above 1": (ValueError, r"must lie in \[0, 1\]", dict(x=X * 1.5 + 0.1, epsilons=[0.1])),
    "x below 0": (ValueError, r"must lie in \[0, 1\]", dict(x=X - 0.5, epsilons=[0.1])),
    "x/y lengths": (ValueError, "x and y lengths differ", dict(y=Y[:-1], epsilons=[0.1])),
    "radius length": (ValueError, "certified_radius lengths differ", dict(epsilons=[0.1], certified_radius=R[:-2])),
    "batch size": (ValueError, "batch_size must be an integer >= 1", dict(epsilons=[0.1], batch_size=0)),
    "unknown option": (ValueError, "unknown option 'stepz'", dict(epsilons=[0.1], options={"pgd_l2": {"stepz": 1}})),
    "options for absent attack": (
        ValueError,
        "not in the attack list",
        dict(epsilons=[0.1], attacks=["fgm"], options={"cw_l2": {}}),
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_inputs_fail_before_any_work(case, toy10, counting):
    error, message, kwargs = BAD_CASES[case]
    kwargs = {"x": X, "y": Y, "attacks": ["fgm", "pgd_l2"], "certified_radius": R, **kwargs}
    model = counting(toy10.model)
    with pytest.raises(error, match=message):
        run_attack_suite(model, progress=False, **kwargs)
    assert model.calls == 0
