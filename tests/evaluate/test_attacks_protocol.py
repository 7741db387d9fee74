"""The combined protocol: pruning is exact (up to carry-forward) and cheaper, errors come before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lipbench.curves import accuracy_from_min_norms
from lipbench.evaluate.attacks import REL_TOL, BinaryAsTwoLogits, run_attack_suite
from lipbench.registry import RegistryError

EPS = [0.0, 0.15, 0.3, 0.45, 1.0]
ATTACK_LIST = ["fgm", "pgd_l2", "cw_l2", "deepfool_l2"]
OPTIONS_EPS = {"pgd_l2": {"steps": 20, "rel_stepsize": 0.1}}
OPTIONS = {**OPTIONS_EPS, "cw_l2": {"steps": 100, "binary_search_steps": 6}}


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


def _carried_forward(pruned, full, name: str) -> np.ndarray:
    """What pruning must give for an eps attack seeded per point, from the unpruned run.

    At each eps (visited in ascending order), a point is broken when certificates leave
    it undecided and either the unpruned attack broke it there or the pruned run already
    broke it at a smaller eps (carry-forward).
    """
    expected = np.zeros_like(full.success[name])
    before = np.zeros(pruned.n_points, bool)
    for e in np.argsort(pruned.epsilons, kind="stable"):
        certified = np.zeros(pruned.n_points, bool) if pruned.certified is None else pruned.certified[e]
        expected[e] = pruned.clean_correct & ~certified & (full.success[name][e] | before)
        before |= pruned.success[name][e]
    return expected


def test_pruning_is_exact_and_saves_calls(pruned_and_unpruned):
    _, pruned, full = pruned_and_unpruned
    correct = pruned.clean_correct
    assert 0 < correct.sum() < len(correct)  # both pruning reasons occur
    assert pruned.certified[1].sum() > 0 and not pruned.certified[-1].all()
    # Carry-forward: a point an eps attack broke at a smaller eps stays broken at larger
    # ones, even where the unpruned rerun fails (attacks are not monotone), so pruned
    # results are no longer equal to unpruned ones but a superset of them (exactly the
    # carried-forward unpruned results for the per-point seeded foolbox attacks).
    assert np.all(pruned.robust_accuracy <= full.robust_accuracy)
    assert not (pruned.robust & ~full.robust).any()
    for name in ("fgm", "pgd_l2"):
        np.testing.assert_array_equal(pruned.success[name], _carried_forward(pruned, full, name), err_msg=name)
    for name in ("cw_l2", "deepfool_l2"):  # minimal attacks: not eps-based, unchanged
        np.testing.assert_array_equal(pruned.success[name], full.success[name])
        np.testing.assert_array_equal(pruned.min_norms[name], full.min_norms[name])
    assert full.calls == full.calls_unpruned and full.calls_saved == 0
    assert sum(pruned.calls.values()) < sum(full.calls.values())
    for name in ("fgm", "pgd_l2"):
        # pruned: only correct, uncertified points at eps > 0 not yet broken are attacked
        broken = np.maximum.accumulate(pruned.success[name], axis=0)  # EPS is sorted
        expected = [int((correct & ~pruned.certified[e] & ~broken[e - 1]).sum()) for e in range(1, len(EPS))]
        assert pruned.calls_by_eps[name] == [0, *expected]
        assert pruned.calls[name] == sum(expected) < full.calls[name] == len(correct) * len(EPS)
    assert pruned.calls["cw_l2"] == full.calls["cw_l2"] == correct.sum()  # not eps-based: never pruned
    assert not full.certificate_violations.any()  # the certificates are valid


def test_success_is_monotone_in_eps_when_pruned(pruned_and_unpruned):
    _, pruned, _ = pruned_and_unpruned
    for name in ATTACK_LIST:
        success = pruned.success[name]
        assert not (success[:-1] & ~success[1:]).any(), name  # broken at eps1 => broken at every eps2 > eps1
    per_attack = pruned.per_attack_robust_accuracy
    assert set(per_attack) == set(ATTACK_LIST)
    for name, accuracy in per_attack.items():
        assert accuracy.shape == (len(EPS),) and np.all(np.diff(accuracy) <= 0), name
        np.testing.assert_array_equal(accuracy, (pruned.clean_correct[None, :] & ~pruned.success[name]).mean(axis=1))
        assert np.all(accuracy >= pruned.robust_accuracy)


class _Band(nn.Module):
    """Class 1 only for ``t = w . (x - 0.5)`` in (0.1, 0.3), ``w`` a unit vector.

    From ``t <= 0`` (class 0), L2 FGM steps by exactly ``eps`` along ``w``: it lands in the
    band at eps 0.25 and beyond it at eps 0.5, a non-monotone attack.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.full((64,), 1 / 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = (x.flatten(1) - 0.5) @ self.w
        return torch.stack([torch.zeros_like(t), 1 - ((t - 0.2) / 0.1) ** 2], dim=1)


def _band_points() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = _Band()
    t0 = torch.tensor([0.0, -0.05, 0.02])
    return model, (0.5 + t0[:, None] * model.w).view(3, 1, 8, 8), torch.zeros(3, dtype=torch.long)


@pytest.mark.parametrize("eps", [[0.25, 0.5], [0.5, 0.25]])
def test_carry_forward_keeps_what_a_smaller_eps_broke(eps):
    model, x, y = _band_points()
    runs = [run_attack_suite(model, x, y, eps, ["fgm"], prune=prune, progress=False) for prune in (True, False)]
    pruned, full = runs
    small, large = np.argsort(eps)
    assert full.success["fgm"][small].all() and not full.success["fgm"][large].any()  # FGM overshoots the band
    assert pruned.success["fgm"].all()  # carried forward: robust accuracy 0 at both radii
    np.testing.assert_array_equal(pruned.success["fgm"], _carried_forward(pruned, full, "fgm"))
    np.testing.assert_array_equal(pruned.robust_accuracy, [0.0, 0.0])
    assert full.robust_accuracy[large] == 1.0
    assert pruned.calls_by_eps["fgm"][large] == 0 and pruned.calls_saved_by_smaller_eps["fgm"] == 3
    np.testing.assert_array_equal(pruned.examples["fgm"][large], pruned.examples["fgm"][small])  # copied


def test_calls_saved_add_up_by_reason(pruned_and_unpruned, toy10):
    _, pruned, full = pruned_and_unpruned
    large_first = run_attack_suite(
        toy10.model,
        toy10.x,
        toy10.y,
        [1.0, 1.5, 2.5],  # most points break at the first radius: later ones are carried forward
        ["fgm", "pgd_l2", "autoattack_l2"],
        toy10.radius,
        options={**OPTIONS_EPS, "autoattack_l2": {"n_iter": 10, "square_n_queries": 100}},
        progress=False,
    )
    for res in (pruned, full, large_first):
        for name in res.calls_by_eps:
            saved = res.calls_saved_by_certificates[name] + res.calls_saved_by_smaller_eps[name]
            assert res.calls[name] + saved == res.calls_unpruned[name] == res.n_points * len(res.epsilons), name
            assert res.calls[name] == sum(res.calls_by_eps[name])
        assert res.calls_saved == sum(res.calls_saved_by_certificates.values()) + sum(res.calls_saved_by_smaller_eps.values())
        summary = json.loads(json.dumps(res.summary()))
        assert summary["calls_saved_by_certificates"] == res.calls_saved_by_certificates
        assert summary["calls_saved_by_smaller_eps"] == res.calls_saved_by_smaller_eps
    assert set(full.calls_saved_by_smaller_eps) == {"fgm", "pgd_l2"}  # eps attacks only
    assert not any(full.calls_saved_by_certificates.values()) and not any(full.calls_saved_by_smaller_eps.values())
    assert all(pruned.calls_saved_by_certificates.values())
    for name in ("fgm", "pgd_l2", "autoattack_l2"):
        assert large_first.calls_saved_by_smaller_eps[name] > 0, name
        assert large_first.calls_by_eps[name][0] == large_first.clean_correct.sum()  # nothing certified at 1.0


@pytest.mark.parametrize("prune", [True, False])
def test_unsorted_epsilons_give_the_sorted_results(prune, toy10):
    unsorted, ascending = [0.5, 0.1, 0.25, 0.1], [0.1, 0.25, 0.5]  # with a repeated radius
    rows = [ascending.index(e) for e in unsorted]
    kwargs = dict(certified_radius=toy10.radius, options=OPTIONS_EPS, prune=prune, progress=False, n_examples=32)
    res = run_attack_suite(toy10.model, toy10.x, toy10.y, unsorted, ["fgm", "pgd_l2"], **kwargs)
    ref = run_attack_suite(toy10.model, toy10.x, toy10.y, ascending, ["fgm", "pgd_l2"], **kwargs)
    assert res.epsilons == unsorted  # indexed like the input
    np.testing.assert_array_equal(res.robust, ref.robust[rows])
    np.testing.assert_array_equal(res.certified, ref.certified[rows])
    for name in ("fgm", "pgd_l2"):
        np.testing.assert_array_equal(res.success[name], ref.success[name][rows], err_msg=name)
        np.testing.assert_array_equal(res.examples[name], ref.examples[name][rows], err_msg=name)
        assert res.calls_by_eps[name][:3] == [ref.calls_by_eps[name][r] for r in rows[:3]]
        if prune:  # the repeated 0.1: what the first 0.1 broke is carried, the rest attacked again
            assert res.calls_by_eps[name][3] == ref.calls_by_eps[name][0] - ref.success[name][0].sum()


def test_carried_examples_are_adversarial_within_the_larger_ball(toy10):
    eps = [0.5, 1.5, 1.0]
    res = run_attack_suite(
        toy10.model, toy10.x, toy10.y, eps, ["fgm", "pgd_l2"], toy10.radius, options=OPTIONS_EPS, progress=False, n_examples=32
    )
    carried = 0
    for name in ("fgm", "pgd_l2"):
        examples, success = res.examples[name], res.success[name]
        first = np.full(res.n_points, -1)  # row of the smallest eps that broke each point
        for e in np.argsort(eps):
            later = success[e] & (first >= 0)  # broken at a smaller eps, carried to this one
            carried += int(later.sum())
            np.testing.assert_array_equal(examples[e][later], examples[first[later], np.flatnonzero(later)])
            x_adv = torch.from_numpy(examples[e][later])
            assert ((x_adv - toy10.x[later]).flatten(1).norm(dim=1) <= eps[e] * (1 + REL_TOL)).all()
            assert (toy10.model(x_adv).argmax(1) != toy10.y[later]).all()
            first[success[e] & (first < 0)] = e
    assert carried > 0


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
