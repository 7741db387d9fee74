"""AutoAttack adapter: both implementations, class-count plans, verified successes."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import pytest
import torch
from torch import nn

from lipbench.evaluate.attacks import ATTACKS, REL_TOL, load_autoattack
from lipbench.evaluate.attacks.autoattack_adapter import STANDARD_ATTACKS, plan

FAST = {"n_iter": 10, "square_n_queries": 100}
DEFAULTS = dict(ATTACKS.get("autoattack_l2").defaults)


def _labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return (out[:, 0] > 0).long() if out.shape[1] == 1 else out.argmax(1)


def _check_verified(model, x, y, res) -> None:
    for e, eps in enumerate(res.epsilons):
        ok = torch.from_numpy(res.success[e])
        dist = (res.x_adv[e] - x).flatten(1).norm(dim=1)
        assert (dist <= eps * (1 + REL_TOL) + 1e-7).all()  # every returned point, not only successes
        assert (_labels(model, res.x_adv[e][ok]) != y[ok]).all()
        assert not (_labels(model, res.x_adv[e][~ok]) != y[~ok]).any()


@pytest.mark.parametrize("binary", [False, True])
def test_autoattack_runs_and_records_provenance(binary, toy10, toy_binary):
    toy = toy_binary if binary else toy10
    res = ATTACKS.get("autoattack_l2")(toy.model, toy.x, toy.y, [0.3, 2.0], batch_size=32, options=FAST)
    _check_verified(toy.model, toy.x, toy.y, res)
    correct = (_labels(toy.model, toy.x) == toy.y).numpy()
    assert res.success[1][correct].mean() > 0.8  # a strong attack at a large radius
    assert res.success[0][correct].mean() < res.success[1][correct].mean()
    info = res.info
    assert info["implementation"] == "pyautoattack"
    assert info["implementation_version"] == importlib.metadata.version("pyautoattack")
    assert info["norm"] == "L2" and info["version_requested"] == "standard"
    assert (info["n_iter"], info["square_n_queries"]) == (10, 100)
    if binary:
        assert info["attacks"] == ["apgd-ce", "fab", "square"] and info["version"] == "custom"
    else:
        assert info["attacks"] == list(STANDARD_ATTACKS) and info["version"] == "standard"
        assert info["n_target_classes"] == 9


def test_autoattack_is_seeded_and_leaves_global_rng_alone(toy10):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    attack = ATTACKS.get("autoattack_l2")
    a = attack(toy10.model, toy10.x[:12], toy10.y[:12], [0.4], options=FAST)
    torch.testing.assert_close(torch.rand(3), expected)
    b = attack(toy10.model, toy10.x[:12], toy10.y[:12], [0.4], options=FAST)
    torch.testing.assert_close(a.x_adv, b.x_adv)


def test_plan_follows_class_requirements():
    assert plan(10, DEFAULTS) == ("standard", list(STANDARD_ATTACKS), 9)
    assert plan(5, DEFAULTS) == ("standard", list(STANDARD_ATTACKS), 4)  # targets <= K - 1
    assert plan(3, DEFAULTS) == ("custom", ["apgd-ce", "apgd-dlr", "fab-t", "square"], 2)
    assert plan(2, DEFAULTS) == ("custom", ["apgd-ce", "fab", "square"], 1)
    with pytest.raises(ValueError, match="'apgd-t' needs at least 4 classes"):
        plan(3, {**DEFAULTS, "version": "custom", "attacks": ["apgd-t"]})


def test_three_class_plan_runs():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    x = torch.rand(9, 1, 8, 8, generator=g)
    y = _labels(model, x)
    res = ATTACKS.get("autoattack_l2")(model, x, y, [1.0], options=FAST)
    assert res.info["attacks"] == ["apgd-ce", "apgd-dlr", "fab-t", "square"]
    _check_verified(model, x, y, res)


def test_bad_autoattack_options_and_inputs(toy10, counting):
    model = counting(toy10.model)
    attack = ATTACKS.get("autoattack_l2")
    with pytest.raises(ValueError, match="needs version='custom'"):
        attack(model, toy10.x, toy10.y, [0.1], options={"attacks": ["apgd-ce"]})
    with pytest.raises(ValueError, match="'version'"):
        attack(model, toy10.x, toy10.y, [0.1], options={"version": "plus"})
    assert model.calls == 0
    with pytest.raises(ValueError, match="H, W >= 5"):
        small = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        attack(small, torch.rand(4, 1, 4, 4), torch.zeros(4, dtype=torch.long), [0.1])


class _FakeOriginalAutoAttack:
    """Stands in for fra31/auto-attack's class (positional/keyword API, prints, returns x_adv)."""

    built: list[dict] = []

    def __init__(
        self,
        model,
        norm="Linf",
        eps=0.3,
        seed=None,
        verbose=True,
        attacks_to_run=(),
        version="standard",
        is_tf_model=False,
        device="cuda",
        log_path=None,
    ):
        self.model, self.eps = model, eps
        self.built.append(
            dict(norm=norm, eps=eps, seed=seed, verbose=verbose, attacks_to_run=attacks_to_run, version=version, device=device)
        )
        ns = types.SimpleNamespace
        self.apgd, self.fab = ns(n_restarts=5, n_iter=100), ns(n_restarts=5, n_iter=100, n_target_classes=9)
        self.apgd_targeted = ns(n_restarts=1, n_iter=100, n_target_classes=9)
        self.square = ns(n_queries=5000)

    def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False):
        print("robust accuracy: whatever")
        return (x_orig + 10 * self.eps * torch.randn_like(x_orig)).clamp(0, 1)  # outside eps: must be projected


def test_falls_back_to_original_autoattack(monkeypatch, toy10):
    fake = types.ModuleType("autoattack")
    fake.AutoAttack, fake.__version__ = _FakeOriginalAutoAttack, "0.1-fake"
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # import fails
    monkeypatch.setitem(sys.modules, "autoattack", fake)
    _FakeOriginalAutoAttack.built = []
    res = ATTACKS.get("autoattack_l2")(toy10.model, toy10.x, toy10.y, [0.2], batch_size=16)
    assert (res.info["implementation"], res.info["implementation_version"]) == ("autoattack", "0.1-fake")
    assert len(_FakeOriginalAutoAttack.built) == 2  # one adversary per batch of the single eps
    assert _FakeOriginalAutoAttack.built[0] == dict(
        norm="L2", eps=0.2, seed=0, verbose=False, attacks_to_run=[], version="standard", device=torch.device("cpu")
    )
    assert "robust accuracy: whatever" in res.info["warnings"]  # its prints are captured, not shown
    _check_verified(toy10.model, toy10.x, toy10.y, res)


def test_missing_autoattack_is_a_clear_import_error(monkeypatch, toy10, counting):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    monkeypatch.setitem(sys.modules, "autoattack", None)
    with pytest.raises(ImportError, match="pip install pyautoattack"):
        load_autoattack()
    model = counting(toy10.model)
    with pytest.raises(ImportError, match="git\\+https://github.com/fra31/auto-attack"):
        ATTACKS.get("autoattack_l2")(model, toy10.x, toy10.y, [0.1])
    assert model.calls == 0
