"""ARMOR_D on TRADES (armor_kl_trades, armor_alpha_trades): the per-sample KL, the outer
loss CE + β·ARMOR(KL, c) and its re-weighting, the inner maximisation from TRADES's random
start, parameter checks, and a short real training of each method."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipbench.methods.armor as armor_module
from lipbench.losses_armor import (
    armor_alpha_loss,
    armor_kl_optimal_lambda,
    per_sample_trades_kl,
    transport_cost,
)
from lipbench.methods import get_method
from lipbench.methods.armor import ArmorLoss, ot_inner_maximisation
from lipbench.methods.armor_trades import trades_start
from lipbench.profiles import load_profile
from lipbench.runs import RunKey
from lipbench.train import load_weights, run_training

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_the_trades_kl_is_nonnegative_zero_at_the_clean_point_and_bernoulli_for_one_logit():
    generator = torch.Generator().manual_seed(0)
    clean, moved = torch.randn(64, 10, generator=generator) * 3, torch.randn(64, 10, generator=generator) * 3
    kl = per_sample_trades_kl(clean, moved)
    assert kl.shape == (64,) and bool((kl >= 0).all()) and float(kl.min()) > 0
    assert torch.equal(per_sample_trades_kl(clean, clean), torch.zeros(64))
    reference = F.kl_div(F.log_softmax(moved, 1), F.log_softmax(clean, 1), reduction="none", log_target=True).sum(1)
    torch.testing.assert_close(kl, reference)
    # One logit f: the Bernoulli KL of sigmoid(f), i.e. the 2-class KL of logits (0, f).
    clean_binary, moved_binary = clean[:, :1], moved[:, :1]
    binary = per_sample_trades_kl(clean_binary, moved_binary)
    two_class = per_sample_trades_kl(F.pad(clean_binary, (1, 0)), F.pad(moved_binary, (1, 0)))
    torch.testing.assert_close(binary, two_class)
    assert bool((binary >= 0).all()) and torch.equal(per_sample_trades_kl(clean_binary, clean_binary), torch.zeros(64))


def _linear_batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(4, 3).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 4, generator=generator, dtype=torch.float64) * 2)
        model.bias.copy_(torch.randn(3, generator=generator, dtype=torch.float64))
    x = torch.rand(6, 4, generator=generator, dtype=torch.float64)
    moved = x + 0.3 * torch.randn(6, 4, generator=generator, dtype=torch.float64)
    return model, x, moved, torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("divergence", ["kl", "alpha"])
def test_the_outer_loss_is_clean_cross_entropy_plus_beta_times_the_armor_objective(divergence):
    model, x, moved, y = _linear_batch()
    radius, lam, beta, nu, alpha = 0.01, 0.8, 6.0, -0.2, 3.0
    loss = ArmorLoss(divergence, radius, lam, alpha=alpha, nu_init=nu, base="trades", trades_beta=beta).double()
    costs = transport_cost(x, moved, 0.1, 1.5)
    loss.set_batch(costs, model(x))
    value = loss(model(moved), y).detach()
    # λ = softplus of a float32 raw parameter, ν a float32 parameter: 0.8 and −0.2 up to rounding.
    lam, nu = float(loss.lam.detach()), float(loss.nu.detach()) if loss.nu is not None else nu
    # By hand: p = softmax(Wx + b), q = softmax(Wx̃ + b), KL_i = Σ_k p log(p/q), CE_i = −log p_{y_i}.
    with torch.no_grad():
        p, q = torch.softmax(x @ model.weight.T + model.bias, 1), torch.softmax(moved @ model.weight.T + model.bias, 1)
        kl = (p * (p.log() - q.log())).sum(1)
        cross_entropy = -p[torch.arange(6), y].log().mean()
        if divergence == "kl":
            robust = radius * lam + lam * math.log(float(torch.exp(kl / lam - costs).mean()))
        else:
            lam_t, nu_t = torch.tensor(lam, dtype=torch.float64), torch.tensor(nu, dtype=torch.float64)
            robust = float(armor_alpha_loss(kl, costs, lam_t, nu_t, radius, alpha))
    assert float(kl.min()) > 1e-3  # a real KL term
    assert float(value) == pytest.approx(float(cross_entropy) + beta * robust, rel=1e-12)
    # Without set_batch: x̃ = x, so KL = 0, c = 0 and the loss is CE + β·ελ (KL variant).
    if divergence == "kl":
        assert float(loss(model(x), y).detach()) == pytest.approx(float(cross_entropy) + beta * radius * lam, rel=1e-12)


@pytest.mark.parametrize("bisection", [False, True])
def test_the_gradient_wrt_each_kl_term_is_beta_times_the_softmax_of_kl_over_lambda_minus_cost(bisection, monkeypatch):
    model, x, moved, y = _linear_batch(1)
    captured = []

    def capture(clean_logits, logits):  # the per-sample KL terms, their gradient kept
        value = per_sample_trades_kl(clean_logits, logits)
        value.retain_grad()
        captured.append(value)
        return value

    monkeypatch.setattr(armor_module, "per_sample_trades_kl", capture)
    loss = ArmorLoss("kl", 0.01, 0.05, base="trades", trades_beta=6.0, lambda_bisection=bisection).double()
    costs = transport_cost(x, moved, 0.01, 1.5)
    loss.set_batch(costs, model(x))
    loss(model(moved), y).backward()
    kl = captured[0].detach()
    lam = armor_kl_optimal_lambda(kl, costs, 0.01, clean_losses=torch.zeros_like(kl)) if bisection else loss.lam.detach()
    if bisection:
        assert torch.equal(loss.lam, lam) and 1e-3 < float(lam) < 1e3  # an interior λ*
    weights = torch.softmax(kl / lam - costs, dim=0)
    torch.testing.assert_close(captured[0].grad, 6.0 * weights)
    assert float(weights.max()) > 1.2 * float(weights.min())  # a real re-weighting


def test_the_inner_maximisation_ascends_the_kl_objective_from_the_trades_start():
    torch.manual_seed(0)
    method = get_method("armor_kl_trades")
    params = method.resolve_params({"steps": 10, "step_size": 0.2})
    model = method.build_model((1, 8, 8), 10, "digits_dense")
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    # An untrained network's logits are nearly flat (std ~0.1), its KLs tiny: a small λ makes
    # KL/λ outgrow the cost (near x the cost ~‖δ‖^1.5 beats the KL ~‖δ‖², so x̃ = x is a local max).
    lam, weight, power = 0.002, float(params["cost_weight"]), float(params["cost_power"])
    per_sample_loss, start = method._adversary(model, x, y, (0.0, 1.0), torch.Generator().manual_seed(3))
    assert torch.equal(start, trades_start(x, torch.Generator().manual_seed(3), (0.0, 1.0)))
    assert 0 < float((start - x).flatten(1).norm(dim=1).max()) < 0.05  # x + 0.001·N(0, I)
    with torch.no_grad():
        assert torch.equal(per_sample_loss(model(x)), torch.zeros(32))  # KL(p(x) ‖ p(x)) = 0

    def objective(candidate):
        with torch.no_grad():
            return per_sample_loss(model(candidate)) / lam - transport_cost(x, candidate, weight, power)

    moved = ot_inner_maximisation(
        model, x, y, lam, weight, power, 10, 0.2, bounds=(0.0, 1.0), per_sample_loss=per_sample_loss, start=start
    )
    before, after = objective(start), objective(moved)
    assert bool((after >= before).all()) and int((after > before + 1e-4).sum()) >= 30
    assert float(moved.min()) >= 0.0 and float(moved.max()) <= 1.0
    # Through the method: the loss gets the costs and the clean logits with their graph.
    loss = method.loss_function(False, params)
    method.training_inputs(model, x, y, loss, params, (0.0, 1.0), torch.Generator().manual_seed(3))
    costs, clean = loss._batch
    assert costs.shape == (32,) and float(costs.min()) > 0 and clean.shape == (32, 10) and clean.requires_grad


@pytest.mark.parametrize(
    "method, params, message",
    [
        ("armor_kl_trades", {"clean_weight": 0.5}, r"does not take clean_weight"),
        ("armor_kl_trades", {"trades_beta": 0.0}, r"'armor_kl_trades': parameter trades_beta must be > 0, got 0.0"),
        ("armor_kl_trades", {"lambda_bisection": "true"}, r"lambda_bisection must be true or false, got 'true'"),
        ("armor_alpha_trades", {"lambda_bisection": True}, r"'armor_alpha_trades': parameter lambda_bisection must be false"),
        ("armor_kl_trades", {"lambda_bisection": True}, r"lambda_bisection must be false for the TRADES variants"),
        ("armor_kl", {"trades_beta": 6.0}, r"does not take trades_beta"),
    ],
)
def test_trades_parameters_are_checked_naming_the_method_and_the_key(method, params, message):
    with pytest.raises(ValueError, match=message):
        get_method(method).resolve_params(params)


def test_trades_defaults():
    resolved = get_method("armor_alpha_trades").resolve_params({})
    assert resolved["trades_beta"] == 6.0 and resolved["lambda_bisection"] is False and "clean_weight" not in resolved
    assert get_method("armor_kl_trades").paper_name == "TRADES-ARMOR_KL"


@pytest.mark.parametrize(
    "method, params",
    [
        ("armor_kl_trades", {"steps": 2}),
        ("armor_alpha_trades", {"steps": 2}),
    ],
)
def test_a_short_trades_training_runs_and_writes_its_weights(method, params, tmp_path, prepared_digits, digits_profile):
    profile = load_profile(digits_profile(tmp_path, prepared_digits, {method: params}))
    run_training(profile, RunKey("digits", method, 0), tmp_path / "run", tmp_path / "run-metrics", progress=False)
    model, _ = load_weights(tmp_path / "run/weights.safetensors")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert json.loads((tmp_path / "run-metrics/metrics.json").read_text())["test_accuracy"] > 0.3
    resolved = get_method(method).resolve_params(params)
    learned = dict(get_method(method).loss_function(False, resolved).named_parameters())
    checkpoint = torch.load(tmp_path / "run/checkpoint.pt", weights_only=True)
    # λ (and ν) learned: moved from their initial values
    assert set(checkpoint["loss"]) == set(learned)
    assert all(abs(float(checkpoint["loss"][name]) - float(learned[name].detach())) > 1e-4 for name in learned)
