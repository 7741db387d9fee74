"""The pairwise certificate: ``min_{j != t} (f_t - f_j) / (L' ||w_t - w_j||)`` for a last dense
layer after a chain with bound ``L'``; never below the whole-map and per-logit certificates,
sound on a trained network, exact for a linear classifier, and checked by the gate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import lipbench.nn as lnn
from lipbench.evaluate.verification import VerifyOptions, audit_certificates, check_pairwise_bounds
from lipbench.nn.certificates import CERTIFICATE_KINDS, certified_radius, certified_radius_and_kind, pairwise_radius
from lipbench.summaries import UpperBoundRecord


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread: None) -> None:
    """Tiny models: one torch thread (tests/conftest.py)."""


def random_network(seed: int, inputs: int = 6, hidden: int = 12, classes: int = 5) -> nn.Sequential:
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(inputs, hidden), lnn.GroupSort2(), nn.Linear(hidden, classes))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            scale = float(torch.empty(1).uniform_(0.2, 3.0, generator=generator))
            layer.weight.copy_(scale * torch.randn(layer.weight.shape, generator=generator))
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator))
    return model


@pytest.mark.parametrize("seed", range(40))
def test_the_pairwise_radius_is_never_below_the_whole_map_and_per_logit_radii(seed):
    model = random_network(seed, classes=2 + seed % 9)
    upper = lnn.lipschitz_upper_bound(model, (6,))
    weight, prefix = model[2].weight.detach().double(), upper.prefix
    # the raw constants L' ||w_i - w_j|| already obey both inequalities of the proof
    raw = prefix * torch.cdist(weight, weight, compute_mode="donot_use_mm_for_euclid_dist")
    assert prefix == pytest.approx(upper.whole_map / float(torch.linalg.matrix_norm(weight, 2)), rel=1e-12)
    assert float(raw.max()) <= math.sqrt(2) * upper.whole_map * (1 + 1e-12)
    assert float(raw.max()) <= 2 * upper.max_per_logit * (1 + 1e-12)
    torch.testing.assert_close(torch.tensor(upper.pairwise, dtype=torch.float64), raw, rtol=1e-12, atol=0)
    generator = torch.Generator().manual_seed(1000 + seed)
    logits = torch.randn(500, weight.shape[0], generator=generator) * float(torch.rand(1, generator=generator) * 5)
    whole = certified_radius(logits, whole_map_lipschitz=upper.whole_map)
    per_logit = certified_radius(logits, per_logit_lipschitz=upper.max_per_logit)
    pairwise = certified_radius(logits, pairwise=upper.pairwise)
    assert (pairwise >= whole).all() and (pairwise >= per_logit).all()
    assert (pairwise > torch.maximum(whole, per_logit) * (1 + 1e-3)).float().mean() > 0.5
    radius, kind = certified_radius_and_kind(logits, upper.whole_map, upper.max_per_logit, upper.pairwise)
    torch.testing.assert_close(radius, pairwise)
    assert kind.dtype == torch.int8 and set(kind.tolist()) <= {0, 1, 2} and (kind == 2).any()
    # the existing behaviour without pairwise bounds
    torch.testing.assert_close(
        certified_radius(logits, upper.whole_map, upper.max_per_logit), torch.maximum(whole, per_logit), rtol=0, atol=0
    )


def test_kinds_ties_binary_and_degenerate_pairs():
    assert CERTIFICATE_KINDS == ("whole_map", "per_logit", "pairwise")
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.5, 0.4], [1.0, 1.0, 0.0]])
    # constants at their worst case: no gain, the tie goes to the lower code
    worst = torch.full((3, 3), math.sqrt(2.0)).fill_diagonal_(0)
    radius, kind = certified_radius_and_kind(logits, 1.0, None, worst)
    torch.testing.assert_close(radius, torch.tensor([2.0, 0.1, 0.0]) / math.sqrt(2))
    assert kind.tolist() == [0, 0, 0]
    # class 0 and 2 have equal rows (c = 0): that pair never flips; a tie is radius 0
    pairwise = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 2.0], [0.0, 2.0, 0.0]])
    torch.testing.assert_close(pairwise_radius(logits, pairwise), torch.tensor([2.0, 0.05, 0.0], dtype=torch.float64))
    radius, kind = certified_radius_and_kind(torch.tensor([[0.5], [-2.0]]), 2.0, 1.0)
    torch.testing.assert_close(radius, torch.tensor([0.5, 2.0]))
    assert kind.tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"\(3, 3\) matrix"):
        certified_radius(logits, pairwise=torch.ones(2, 2))
    with pytest.raises(ValueError, match="finite Lipschitz bounds >= 0"):
        certified_radius(logits, pairwise=-torch.ones(3, 3))


def test_a_float32_radius_never_exceeds_its_float64_value():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 10, generator=generator)
    pairwise = (torch.rand(10, 10, generator=generator, dtype=torch.float64) + 0.5) / 3
    radius, kind = certified_radius_and_kind(logits, pairwise=pairwise)
    assert radius.dtype == torch.float32 and (kind == 2).all()
    assert (radius.double() <= pairwise_radius(logits, pairwise)).all()


def test_the_pairwise_radius_is_the_exact_distance_to_the_boundary_of_a_linear_classifier():
    """Class t's region is the polytope {f_t >= f_j}: its distance to the boundary is
    min_j (f_t - f_j) / ||w_t - w_j||, which the pairwise certificate attains (L' = 1)."""
    generator = torch.Generator().manual_seed(3)
    model = nn.Linear(8, 6).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(6, 8, generator=generator, dtype=torch.float64))
    x = torch.randn(200, 8, generator=generator, dtype=torch.float64)
    upper = lnn.lipschitz_upper_bound(nn.Sequential(model), (8,))
    with torch.no_grad():
        logits = model(x)
    radius, kind = certified_radius_and_kind(logits, upper.whole_map, upper.max_per_logit, upper.pairwise)
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    for point, r in zip(x.numpy(), radius.numpy()):
        f = w @ point + b
        t = int(f.argmax())
        distances = [(f[t] - f[j]) / np.linalg.norm(w[t] - w[j]) for j in range(6) if j != t]
        assert r == pytest.approx(min(distances), abs=1e-6)
        # the closest boundary point, just beyond it: the class changes there
        j = [j for j in range(6) if j != t][int(np.argmin(distances))]
        direction = (w[t] - w[j]) / np.linalg.norm(w[t] - w[j])
        beyond = torch.from_numpy(point - (r + 1e-9) * direction)
        assert int(model(beyond[None]).argmax()) != t
    assert (kind == 2).float().mean() > 0.9


def trained_network(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A small GroupSort network trained on 4 Gaussian blobs (cross-entropy, a few seconds)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    centers = 2 * torch.randn(4, 10, generator=generator)
    labels = torch.randint(0, 4, (1024,), generator=generator)
    x = centers[labels] + 0.7 * torch.randn(1024, 10, generator=generator)
    model = nn.Sequential(nn.Linear(10, 32), lnn.GroupSort2(), nn.Linear(32, 32), lnn.GroupSort2(), nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        batch = torch.randint(0, 1024, (128,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), labels[batch]).backward()
        optimizer.step()
    return model.eval(), x[:256]


def test_pgd_inside_the_pairwise_radius_never_changes_the_class_of_a_trained_network():
    model, x = trained_network()
    upper = lnn.lipschitz_upper_bound(model, (10,))
    with torch.no_grad():
        logits = model(x)
    radius, kind = certified_radius_and_kind(logits, upper.whole_map, upper.max_per_logit, upper.pairwise)
    before = certified_radius(logits, upper.whole_map, upper.max_per_logit)
    assert (radius >= before).all() and float(radius.mean()) > 1.1 * float(before.mean())
    assert (kind == 2).any()
    changed, distance = audit_certificates(model, x, radius, (-100.0, 100.0), steps=60)
    assert not changed.any()
    assert float((distance / radius.clamp_min(1e-12)).median()) > 0.99  # PGD used its whole budget
    # the gate's empirical rates stay below the recorded constants
    record = UpperBoundRecord.from_json(upper.as_dict())
    check, failures = check_pairwise_bounds("toy", model, x, record, VerifyOptions(ascent_steps=5, audit_points=64))
    assert failures == [] and 0 < check["max_rate_over_bound"] <= 1 + 1e-4 and check["pairs"] == 64 * 3


def test_the_gate_names_the_pair_of_a_pairwise_bound_scaled_down():
    model, x = trained_network()
    data = lnn.lipschitz_upper_bound(model, (10,)).as_dict()
    data["pairwise"] = (0.5 * np.asarray(data["pairwise"])).tolist()
    check, failures = check_pairwise_bounds("toy:blobs/net", model, x, UpperBoundRecord.from_json(data), VerifyOptions())
    assert check["beaten"] > 0 and failures
    assert all(message.startswith("toy:blobs/net: the logit difference f_") for message in failures)
    assert "pair (" in failures[0] and "above its certified pairwise bound" in failures[0]


def test_bounds_of_chains_without_a_last_dense_layer_or_with_one_logit_have_no_pairwise_matrix():
    upper = lnn.lipschitz_upper_bound(nn.Sequential(nn.Linear(3, 4), lnn.GroupSort2()), (3,))
    assert upper.prefix is None and upper.pairwise is None
    binary = lnn.lipschitz_upper_bound(nn.Sequential(nn.Linear(3, 4), lnn.GroupSort2(), nn.Linear(4, 1)), (3,))
    assert binary.pairwise is None and binary.prefix is not None
    record = UpperBoundRecord.from_json(binary.as_dict())
    assert check_pairwise_bounds("b", nn.Identity(), torch.zeros(1, 3), record, VerifyOptions()) == ({"pairs": 0}, [])
