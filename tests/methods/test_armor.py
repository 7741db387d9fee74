"""ARMOR_D (armor_kl, armor_alpha): the outer losses' re-weighting, the OT inner
maximisation, λ by bisection, parameter checks, and a real training whose λ, ν learn and
resume (and one with λ by bisection)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import lipbench.methods.armor as armor_module
import lipbench.train.loop as loop
from lipbench.data import load_dataset, take_tensors
from lipbench.losses_armor import (
    armor_alpha_loss,
    armor_alpha_weights,
    armor_kl_lambda_derivative,
    armor_kl_loss,
    armor_kl_optimal_lambda,
    armor_kl_weights,
    f_star_alpha,
    per_sample_cross_entropy,
    transport_cost,
)
from lipbench.methods import get_method
from lipbench.methods.armor import ArmorLoss, ot_inner_maximisation
from lipbench.nn.certificates import predictions
from lipbench.profiles import load_profile
from lipbench.runs import RunKey
from lipbench.train import load_weights, run_training

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _batch(seed: int = 0, size: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    losses = (torch.rand(size, generator=generator, dtype=torch.float64) * 3).requires_grad_(True)
    costs = torch.rand(size, generator=generator, dtype=torch.float64) * 0.5
    return losses, costs, torch.tensor(0.7, dtype=torch.float64, requires_grad=True)


def test_kl_loss_weights_the_batch_by_the_softmax_of_loss_over_lambda_minus_cost():
    losses, costs, lam = _batch()
    loss = armor_kl_loss(losses, costs, lam, radius=0.01)
    grad_losses, grad_lam = torch.autograd.grad(loss, (losses, lam))
    weights = torch.softmax(losses.detach() / lam.detach() - costs, dim=0)
    torch.testing.assert_close(grad_losses, weights)
    torch.testing.assert_close(armor_kl_weights(losses.detach(), costs, lam.detach()), weights)
    assert float(weights.max()) > 2 * float(weights.min())  # a real re-weighting, not uniform
    # d/dλ = ε + log mean exp(L/λ − c) − Σ_i w_i L_i / λ (envelope: x̃ is fixed).
    scores = losses.detach() / lam.detach() - costs
    expected = 0.01 + torch.log(torch.exp(scores).mean()) - (weights * losses.detach()).sum() / lam.detach()
    torch.testing.assert_close(grad_lam, expected)


def test_kl_loss_is_stable_where_exp_overflows():
    losses = torch.tensor([1000.0, 999.0, 0.0])
    value = armor_kl_loss(losses, torch.zeros(3), torch.tensor(0.01), radius=0.0)
    # λ (logsumexp(L/λ) − log 3) = 1000 + 0.01 log((1 + e^{-100} + e^{-100000}) / 3)
    assert torch.isfinite(value) and float(value) == pytest.approx(1000 + 0.01 * torch.log(torch.tensor(1 / 3)).item())


def test_f_star_alpha_is_the_convex_conjugate_of_the_alpha_divergence_function():
    alpha = 3.0
    t = torch.linspace(0, 20, 200_001, dtype=torch.float64)
    f = (t**alpha - 1) / (alpha * (alpha - 1))
    for y in (-1.0, 0.0, 0.3, 1.7):
        conjugate = (y * t - f).max()
        assert float(f_star_alpha(torch.tensor(y, dtype=torch.float64), alpha)) == pytest.approx(float(conjugate), abs=1e-6)


@pytest.mark.parametrize("alpha", [2.0, 3.0, 6.0])
def test_alpha_loss_weights_the_batch_by_the_positive_part_power_and_zeroes_the_rest(alpha):
    losses, costs, lam = _batch(1)
    nu = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    loss = armor_alpha_loss(losses, costs, lam, nu, radius=0.01, alpha=alpha)
    (grad_losses,) = torch.autograd.grad(loss, losses)
    y = (losses.detach() - nu.detach()) / lam.detach() - costs
    expected = torch.relu((alpha - 1) * y) ** (1 / (alpha - 1)) / len(y)
    torch.testing.assert_close(grad_losses, expected)
    torch.testing.assert_close(armor_alpha_weights(losses.detach(), costs, lam.detach(), nu.detach(), alpha) / len(y), expected)
    dropped = y <= 0
    assert 0 < int(dropped.sum()) < len(y)  # both kinds in the batch
    assert bool((grad_losses[dropped] == 0).all()) and bool((grad_losses[~dropped] > 0).all())


def test_the_armor_loss_module_uses_the_batch_costs_once_and_mixes_the_clean_term():
    torch.manual_seed(0)
    outputs, labels = torch.randn(8, 10), torch.arange(8) % 10
    costs = torch.rand(8)
    clean = per_sample_cross_entropy(torch.randn(8, 10), labels)
    loss = ArmorLoss("kl", radius=0.1, lambda_init=2.0, clean_weight=0.25)
    assert float(loss.lam.detach()) == pytest.approx(2.0)
    loss.set_batch(costs, clean)
    robust = armor_kl_loss(per_sample_cross_entropy(outputs, labels), costs, loss.lam, 0.1)
    torch.testing.assert_close(loss(outputs, labels), 0.75 * robust + 0.25 * clean.mean())
    # The next call without set_batch: x̃ = x, zero costs, clean term from these outputs.
    plain = per_sample_cross_entropy(outputs, labels)
    expected = 0.75 * armor_kl_loss(plain, torch.zeros(8), loss.lam, 0.1) + 0.25 * plain.mean()
    torch.testing.assert_close(loss(outputs, labels), expected)
    with pytest.raises(ValueError, match="3 transport costs for a batch of 8"):
        loss.set_batch(torch.zeros(3), None)
        loss(outputs, labels)


def _interior_batch(seed: int, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses and costs small beside the radius 0.05: g' < 0 near 1e-3 and > 0 near 1e3."""
    generator = torch.Generator().manual_seed(seed)
    losses = torch.rand(size, generator=generator, dtype=torch.float64) * 3
    return losses, torch.rand(size, generator=generator, dtype=torch.float64) * 0.01


def _grid_minimum(losses, costs, radius, clean=None, points=200_001):
    """g on a log grid of λ; with ``clean``, each example's better candidate of {x̃_i, x_i}."""
    grid = torch.logspace(-3, 3, points, dtype=torch.float64)
    scores = losses.detach() / grid[:, None] - costs
    if clean is not None:
        scores = torch.maximum(scores, clean / grid[:, None])
    values = radius * grid + grid * (torch.logsumexp(scores, dim=1) - math.log(len(losses)))
    return grid, values


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bisection_lambda_is_the_minimiser_of_the_kl_dual_found_by_a_dense_grid(seed):
    losses, costs = _interior_batch(seed)
    lam = armor_kl_optimal_lambda(losses, costs, radius=0.05)
    assert lam.dtype == torch.float64 and not lam.requires_grad
    grid, values = _grid_minimum(losses, costs, 0.05)
    best = grid[values.argmin()]
    assert 1e-3 < float(best) < 1e3  # an interior minimum
    assert float(lam) == pytest.approx(float(best), rel=1e-3)
    assert float(armor_kl_loss(losses, costs, lam, 0.05)) <= float(values.min()) + 1e-12
    # g'(λ*) = 0 at an interior minimum.
    assert abs(float(armor_kl_lambda_derivative(losses, costs, lam, 0.05))) < 1e-9


@pytest.mark.parametrize(
    "radius, cost_scale, end",
    [(10.0, 0.0, 1e-3), (1e-4, 1.0, 1e3)],  # g' > 0 throughout: low; g' < 0 throughout (large costs): high
)
def test_bisection_lambda_without_a_sign_change_is_the_end_where_the_dual_is_smaller(radius, cost_scale, end):
    losses, costs = _interior_batch(5)
    costs = costs * 100 * cost_scale
    ends = torch.tensor([1e-3, 1e3], dtype=torch.float64)
    slopes = [float(armor_kl_lambda_derivative(losses, costs, e, radius)) for e in ends]
    assert slopes[0] * slopes[1] > 0  # no sign change on [low, high]
    assert float(armor_kl_optimal_lambda(losses, costs, radius)) == end
    _, values = _grid_minimum(losses, costs, radius)
    assert float(armor_kl_loss(losses, costs, torch.tensor(end, dtype=torch.float64), radius)) <= float(values.min()) + 1e-9


def test_bisection_with_the_clean_candidate_stays_finite_where_costs_outweigh_the_losses():
    # Costs so large that with x̃ alone g falls to the end of the interval (g'(high) < 0): the clean
    # candidate x_i (loss L⁰_i, cost 0) bounds z_i below by L⁰_i/λ, so g'(∞) = ε > 0 and λ* is interior.
    losses, costs = _interior_batch(5)
    costs = costs * 100
    clean = losses.detach() * 0.5
    radius = 0.05
    assert float(armor_kl_lambda_derivative(losses, costs, torch.tensor(1e3, dtype=torch.float64), radius)) < 0
    assert float(armor_kl_optimal_lambda(losses, costs, radius)) == 1e3
    lam = armor_kl_optimal_lambda(losses, costs, radius, clean_losses=clean)
    assert 1e-3 < float(lam) < 1e3
    # g is convex with kinks where a candidate takes over: 0 lies between its one-sided slopes at λ*.
    slopes = [float(armor_kl_lambda_derivative(losses, costs, lam * f, radius, clean)) for f in (1 - 1e-6, 1 + 1e-6)]
    assert slopes[0] <= 1e-9 and slopes[1] >= -1e-9
    # The minimiser of g over the candidates {x̃_i, x_i}, by a dense grid.
    grid, values = _grid_minimum(losses, costs, radius, clean, points=20001)
    assert float(lam) == pytest.approx(float(grid[values.argmin()]), rel=1e-3)


def test_the_bisection_loss_uses_lambda_star_detached_and_keeps_it_for_the_next_batch(monkeypatch):
    loss = ArmorLoss("kl", radius=0.05, lambda_init=2.0, clean_weight=0.0, lambda_bisection=True)
    assert list(loss.parameters()) == [] and set(loss.state_dict()) == {"last_lambda"}
    assert float(loss.lam) == 2.0  # the first batch's inner maximisation uses lambda_init
    captured = []

    def capture(outputs, labels):  # the per-sample losses, their gradient kept
        value = per_sample_cross_entropy(outputs, labels)
        value.retain_grad()
        captured.append(value)
        return value

    monkeypatch.setattr(armor_module, "per_sample_cross_entropy", capture)
    seen = []
    for seed in (0, 1):
        generator = torch.Generator().manual_seed(seed)
        outputs = (3 * torch.randn(16, 10, generator=generator, dtype=torch.float64)).requires_grad_(True)
        labels, costs = torch.arange(16) % 10, torch.rand(16, generator=generator, dtype=torch.float64) * 0.01
        loss.set_batch(costs, None)
        value = loss(outputs, labels)
        losses = captured[-1].detach()
        lam = armor_kl_optimal_lambda(losses, costs, 0.05)
        torch.testing.assert_close(value, armor_kl_loss(losses, costs, lam, 0.05))
        value.backward()
        torch.testing.assert_close(captured[-1].grad, torch.softmax(losses / lam - costs, dim=0))
        assert torch.equal(loss.lam, lam) and not loss.lam.requires_grad
        seen.append(float(loss.lam))
    assert seen[0] != pytest.approx(seen[1], rel=1e-3) and all(1e-3 < lam < 1e3 for lam in seen)
    restored = ArmorLoss("kl", radius=0.05, lambda_init=2.0, clean_weight=0.0, lambda_bisection=True)
    restored.load_state_dict(loss.state_dict())
    assert float(restored.lam) == pytest.approx(seen[1], rel=1e-6)  # into the float32 buffer


def _objective(model, x, x_moved, y, lam, weight, power):
    with torch.no_grad():
        return per_sample_cross_entropy(model(x_moved), y) / lam - transport_cost(x, x_moved, weight, power)


@pytest.mark.parametrize("radius", [0.0, 0.3])
def test_inner_maximisation_increases_its_objective_in_the_box_and_the_projection_ball(radius):
    torch.manual_seed(0)
    model = get_method("armor_kl").build_model((1, 8, 8), 10, "digits_dense")
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    lam, weight, power = 0.5, 0.1, 1.5
    moved = ot_inner_maximisation(
        model, x, y, lam, weight, power, steps=10, step_size=0.2, projection_radius=radius, bounds=(0.0, 1.0)
    )
    start, end = _objective(model, x, x, y, lam, weight, power), _objective(model, x, moved, y, lam, weight, power)
    assert bool((end >= start).all()) and int((end > start + 1e-4).sum()) >= 30
    assert float(moved.min()) >= 0.0 and float(moved.max()) <= 1.0
    distance = (moved - x).flatten(1).norm(dim=1)
    if radius:
        assert float(distance.max()) <= radius + 1e-5
    else:
        assert float(distance.max()) > 0.3  # unprojected: beyond the other case's ball


def test_inner_maximisation_stops_where_the_cost_outweighs_the_loss():
    """A huge cost weight: any move costs more than it gains, so x̃ = x."""
    torch.manual_seed(0)
    model = get_method("armor_kl").build_model((1, 8, 8), 10, "digits_dense")
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    moved = ot_inner_maximisation(model, x, y, 1.0, 1e4, 1.5, steps=5, step_size=0.1, bounds=(0.0, 1.0))
    assert torch.equal(moved, x)


@pytest.mark.parametrize(
    "method, params, message",
    [
        ("armor_kl", {"lambda_init": 0.0}, r"lambda_init must be > 0, got 0.0"),
        ("armor_alpha", {"alpha": 1.0}, r"alpha must be > 1, got 1.0"),
        ("armor_kl", {"cost_weight": -0.1}, r"cost_weight must be >= 0, got -0.1"),
        ("armor_kl", {"clean_weight": 1.5}, r"clean_weight must be >= 0 and <= 1, got 1.5"),
        ("armor_kl", {"steps": 2.5}, r"steps must be an integer"),
        ("armor_kl", {"alpha": 2.0}, r"does not take alpha"),
        ("armor_kl", {"lambda_bisection": 1}, r"'armor_kl': parameter lambda_bisection must be true or false, got 1"),
        ("armor_kl", {"lambda_bisection": "yes"}, r"lambda_bisection must be true or false, got 'yes'"),
        ("armor_alpha", {"lambda_bisection": True}, r"'armor_alpha': parameter lambda_bisection must be false for the α"),
    ],
)
def test_out_of_range_parameters_are_refused_naming_the_key_and_the_range(method, params, message):
    with pytest.raises(ValueError, match=message):
        get_method(method).resolve_params(params)


#: armor_kl and armor_alpha with 2 inner steps: the methods of the training tests.
ARMOR_METHODS = {"armor_kl": {"steps": 2}, "armor_alpha": {"steps": 2}}


@pytest.mark.parametrize("method", ["armor_kl", "armor_alpha"])
def test_training_learns_lambda_and_nu_exports_and_resumes_to_the_uninterrupted_run(
    method, tmp_path, prepared_digits, digits_profile, monkeypatch
):
    profile = load_profile(digits_profile(tmp_path, prepared_digits, ARMOR_METHODS))
    key = RunKey("digits", method, 0)
    run_training(profile, key, tmp_path / "whole", tmp_path / "whole-metrics", progress=False)
    state = torch.load(tmp_path / "whole/checkpoint.pt", weights_only=True)["loss"]
    initial = get_method(method).loss_function(False, get_method(method).resolve_params({})).state_dict()
    assert set(state) == ({"raw_lambda", "nu"} if method == "armor_alpha" else {"raw_lambda"})
    assert all(abs(float(state[name]) - float(initial[name])) > 1e-3 for name in state)
    # The exported weights reload and score what the summary says.
    model, _ = load_weights(tmp_path / "whole/weights.safetensors")
    x, y = take_tensors(load_dataset("digits", prepared_digits, {"seed": 0, "test_fraction": 0.25}).test)
    with torch.no_grad():
        accuracy = int((predictions(model(x)) == y).sum()) / len(y)
    metrics = json.loads((tmp_path / "whole-metrics/metrics.json").read_text())
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-9) and accuracy > 0.3

    # Interrupted after epoch 1, then resumed: the same λ, ν and weights as the whole run.
    original = loop._epoch

    def interrupted(run, epoch, *args, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(run, epoch, *args, **kwargs)

    monkeypatch.setattr(loop, "_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_training(profile, key, tmp_path / "cut", tmp_path / "cut-metrics", progress=False)
    assert torch.load(tmp_path / "cut/checkpoint.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(loop, "_epoch", original)
    summary = run_training(profile, key, tmp_path / "cut", tmp_path / "cut-metrics", progress=False)
    assert summary.timing.resumed_from_epoch == 1
    resumed = torch.load(tmp_path / "cut/checkpoint.pt", weights_only=True)["loss"]
    assert all(torch.equal(resumed[name], state[name]) for name in state)
    assert (tmp_path / "cut/weights.safetensors").read_bytes() == (tmp_path / "whole/weights.safetensors").read_bytes()


def test_training_with_lambda_by_bisection_runs_without_learned_loss_variables(tmp_path, prepared_digits, digits_profile):
    params = {"steps": 2, "lambda_bisection": True}
    profile = load_profile(digits_profile(tmp_path, prepared_digits, {"armor_kl": params}))
    run_training(profile, RunKey("digits", "armor_kl", 0), tmp_path / "run", tmp_path / "run-metrics", progress=False)
    method = get_method("armor_kl")
    assert list(method.loss_function(False, method.resolve_params(params)).parameters()) == []
    assert "loss" not in torch.load(tmp_path / "run/checkpoint.pt", weights_only=True)  # nothing learned to resume
    model, _ = load_weights(tmp_path / "run/weights.safetensors")
    assert sum(p.numel() for p in model.parameters()) > 0
    metrics = json.loads((tmp_path / "run-metrics/metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.3
