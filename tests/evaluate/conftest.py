"""Tiny models and synthetic 8x8 image data shared by the attack tests."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread: None) -> None:
    """Every module here runs torch on one thread (tests/conftest.py's ``one_thread``)."""


@dataclass
class Toy:
    """A trained tiny model with test points and valid certified radii."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    radius: torch.Tensor


class CountingModel(nn.Module):
    """Wraps a model and counts forward calls."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


def _images(protos: torch.Tensor, n: int, noise: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, len(protos), (n,), generator=g)
    x = (protos[y] + noise * torch.randn(n, protos.shape[1], generator=g)).clamp(0, 1)
    return x.view(n, 1, 8, 8), y


def _lipschitz_radius(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, binary: bool) -> torch.Tensor:
    """Valid margin certificate: the MLP's Lipschitz bound is the product of spectral norms."""
    lip = 1.0
    for layer in model:
        if isinstance(layer, nn.Linear):
            lip *= torch.linalg.matrix_norm(layer.weight, 2).item()
    with torch.no_grad():
        out = model(x)
    if binary:
        return torch.where(y == 1, out[:, 0], -out[:, 0]) / lip
    top = out.gather(1, y[:, None])[:, 0]
    others = out.scatter(1, y[:, None], float("-inf")).max(1).values
    return (top - others) / (2**0.5 * lip)


@functools.cache
def _train(n_classes: int, noise: float, n_test: int, seed: int) -> Toy:
    """Trained once per session, by the first module that asks (under its ``one_thread``)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    protos = 0.2 + 0.6 * torch.rand(max(n_classes, 2), 64, generator=g)
    x_train, y_train = _images(protos, 2000, noise, g)
    x_test, y_test = _images(protos, n_test, noise, g)
    binary = n_classes == 1
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, n_classes))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        i = torch.randint(0, len(x_train), (128,), generator=g)
        out = model(x_train[i])
        if binary:
            loss = nn.functional.binary_cross_entropy_with_logits(out[:, 0], y_train[i].float())
        else:
            loss = nn.functional.cross_entropy(out, y_train[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return Toy(model, x_test, y_test, _lipschitz_radius(model, x_test, y_test, binary))


@pytest.fixture(scope="module")
def toy10(one_thread: None) -> Toy:
    """10-class MLP on 8x8 images, clean accuracy around 90% (some points misclassified)."""
    return _train(10, 0.4, 32, 0)


@pytest.fixture(scope="module")
def toy_binary(one_thread: None) -> Toy:
    """Single-logit binary MLP (class 1 iff f(x) > 0)."""
    return _train(1, 0.5, 24, 1)


@pytest.fixture
def counting() -> type[CountingModel]:
    return CountingModel
