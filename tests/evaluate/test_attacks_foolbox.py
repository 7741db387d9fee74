"""Foolbox attacks: verified successes, FGM is L2, DeepFool/CW against exact distances."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from lipbench.evaluate.attacks import ATTACKS, REL_TOL, AttackResult

FAST = {"cw_l2": {"steps": 200, "binary_search_steps": 9}, "pgd_l2": {"steps": 20, "rel_stepsize": 0.1}}


def _labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return (out[:, 0] > 0).long() if out.shape[1] == 1 else out.argmax(1)


def _assert_verified(model: nn.Module, x: torch.Tensor, y: torch.Tensor, res: AttackResult) -> None:
    """Every success is misclassified by the model and within eps; every point in [0, 1]."""
    for e, eps in enumerate(res.epsilons):
        x_adv = res.x_adv if res.min_norm is not None else res.x_adv[e]
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        ok = torch.from_numpy(res.success[e])
        dist = (x_adv - x).flatten(1).norm(dim=1)
        assert (dist[ok] <= eps * (1 + REL_TOL) + 1e-7).all()
        assert (_labels(model, x_adv[ok]) != y[ok]).all()


@pytest.mark.parametrize("name", ["fgm", "pgd_l2", "cw_l2", "deepfool_l2"])
@pytest.mark.parametrize("binary", [False, True])
def test_successes_are_genuine(name, binary, toy10, toy_binary):
    toy = toy_binary if binary else toy10
    eps = [0.0, 0.3, 1.0, 2.0]
    res = ATTACKS.get(name)(toy.model, toy.x, toy.y, eps, batch_size=10, options=FAST.get(name))
    assert res.success.shape == (len(eps), len(toy.x))
    _assert_verified(toy.model, toy.x, toy.y, res)
    correct = (_labels(toy.model, toy.x) == toy.y).numpy()
    assert not res.success[0][correct].any()  # nothing moves at eps = 0
    assert res.success[-1][correct].mean() > 0.5  # the attack does break points at a large radius
    if ATTACKS.get(name).minimal:
        assert (res.success[1:] >= res.success[:-1]).all()  # derived from one norm: monotone in eps
        assert res.min_norm.shape == (len(toy.x),)
        assert np.all(res.min_norm[~correct] == 0)


def test_fgm_is_l2_not_linf(toy10):
    eps = 0.3
    x = 0.25 + 0.5 * toy10.x  # away from the box, so most points are not clipped
    res = ATTACKS.get("fgm")(toy10.model, x, _labels(toy10.model, x), [eps])
    delta = (res.x_adv[0] - x).flatten(1)
    unclipped = ((res.x_adv[0] > 0) & (res.x_adv[0] < 1)).flatten(1).all(dim=1)
    assert unclipped.sum() >= len(x) // 2
    np.testing.assert_allclose(delta[unclipped].norm(dim=1).numpy(), eps, rtol=1e-4)
    assert (delta.abs().max(dim=1).values < 0.9 * eps).all()  # L-inf FGSM would move every pixel by eps
    assert res.info["foolbox_attack"] == "FGM"


def test_pgd_is_reproducible_and_batch_independent(toy10):
    attack = ATTACKS.get("pgd_l2")
    a = attack(toy10.model, toy10.x, toy10.y, [0.5], batch_size=32, options={"steps": 5})
    b = attack(toy10.model, toy10.x[5:], toy10.y[5:], [0.5], batch_size=3, options={"steps": 5})
    torch.testing.assert_close(a.x_adv[0, 5:], b.x_adv[0], atol=1e-5, rtol=0)
    c = attack(toy10.model, toy10.x, toy10.y, [0.5], options={"steps": 5, "seed": 1})
    assert not torch.allclose(a.x_adv, c.x_adv)


def _linear_binary(n: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """f(x) = w.x + b: the minimal L2 perturbation is |f(x)| / ||w|| (inside the box)."""
    g = torch.Generator().manual_seed(3)
    lin = nn.Linear(64, 1)
    x = 0.3 + 0.4 * torch.rand(400, 1, 8, 8, generator=g)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(1, 64, generator=g) / 8)
        lin.bias.fill_(-(x.flatten(1) @ lin.weight[0]).median().item())
        f = lin(x.flatten(1))[:, 0]
    w = lin.weight.detach()[0]
    d = f.abs() / w.norm()
    keep = ((d > 0.05) & (d < 0.6)).nonzero()[:n, 0]
    x, f, d = x[keep], f[keep], d[keep]
    closest = x.flatten(1) - (f / w.norm() ** 2)[:, None] * w[None]
    assert closest.min() > 0 and closest.max() < 1  # the box does not bind: the distance is exact
    return nn.Sequential(nn.Flatten(), lin).eval(), x, (f > 0).long(), d


def _linear_3class(n: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear 3 classes: the minimal perturbation is min_j (f_y - f_j) / ||w_y - w_j||."""
    g = torch.Generator().manual_seed(4)
    lin = nn.Linear(64, 3)
    x = 0.3 + 0.4 * torch.rand(400, 1, 8, 8, generator=g)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 64, generator=g) / 8)
        lin.bias.zero_()
        out = lin(x.flatten(1))
    y = out.argmax(1)
    w = lin.weight.detach()
    gaps = (out.gather(1, y[:, None]) - out) / ((w[y][:, None, :] - w[None]).norm(dim=2) + 1e-30)
    d = gaps.scatter(1, y[:, None], float("inf")).min(1).values
    keep = ((d > 0.05) & (d < 0.4)).nonzero()[:n, 0]
    return nn.Sequential(nn.Flatten(), lin).eval(), x[keep], y[keep], d[keep]


@pytest.mark.parametrize("problem", [_linear_binary, _linear_3class])
@pytest.mark.parametrize("name, slack", [("deepfool_l2", 1.03), ("cw_l2", 1.08)])
def test_minimal_norm_matches_exact_distance(problem, name, slack):
    model, x, y, exact = problem(16)
    assert len(x) >= 8
    res = ATTACKS.get(name)(model, x, y, [0.1, 0.3], options=FAST.get(name))
    ratio = res.min_norm / exact.double().numpy()
    assert np.all(ratio >= 1 - 1e-5), ratio.min()  # nothing beats the exact minimum
    assert np.all(ratio <= slack), ratio.max()
    np.testing.assert_array_equal(res.success, res.min_norm[None, :] <= np.array([[0.1], [0.3]]) * (1 + REL_TOL))
    _assert_verified(model, x, y, res)


def test_unknown_and_bad_options(toy10, counting):
    model = counting(toy10.model)
    with pytest.raises(ValueError, match="'step'.*accepted options: abs_stepsize, random_start, rel_stepsize"):
        ATTACKS.get("pgd_l2")(model, toy10.x, toy10.y, [0.1], options={"step": 3})
    with pytest.raises(ValueError, match="'steps'"):
        ATTACKS.get("deepfool_l2")(model, toy10.x, toy10.y, [0.1], options={"steps": 0})
    with pytest.raises(ValueError, match="'loss'"):
        ATTACKS.get("deepfool_l2")(model, toy10.x, toy10.y, [0.1], options={"loss": "hinge"})
    assert model.calls == 0


def test_deepfool_does_not_log_per_batch(toy10, caplog):
    with caplog.at_level(logging.INFO):
        ATTACKS.get("deepfool_l2")(toy10.model, toy10.x, toy10.y, [0.1], batch_size=8)
    assert not [r for r in caplog.records if "Only testing the top" in r.getMessage()]
