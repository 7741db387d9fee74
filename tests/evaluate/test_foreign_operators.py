"""Every ONNX operator lipbench accepts from onnx2torch: its graph bound is strict, and tight where it is exact."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from lipbench.nn import graph_lipschitz_upper_bound

SHAPE = (1, 8, 8)


def _converted(model: nn.Module, path: Path) -> nn.Module:
    """``model`` exported to ONNX (opset 17) and converted back by onnx2torch."""
    import onnx2torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), torch.zeros(1, *SHAPE), str(path), dynamo=False, opset_version=17)
    return onnx2torch.convert(onnx.load(str(path))).eval()


class Op(nn.Module):
    """``forward(x) = op(self, x)`` with a dense layer ``lin`` (64 -> 16) and a 1x1 conv ``conv`` at hand."""

    def __init__(self, op, bias: float | None = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.op, self.lin, self.conv = op, nn.Linear(64, 16), nn.Conv2d(1, 3, 1)
        self.norm = nn.BatchNorm2d(1)
        with torch.no_grad():  # bias None: pre-activations 0 at x0 = 0.5, where tanh' and sigmoid' peak
            self.lin.bias.copy_(-0.5 * self.lin.weight.sum(1) if bias is None else torch.full((16,), bias))
            self.norm.running_var.fill_(0.3), self.norm.running_mean.fill_(0.1), self.norm.weight.fill_(-1.5)

    def h(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.flatten(x, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(self, x)


# name -> (op, bias of ``lin``, whether the bound is the exact Lipschitz constant, reached at x0 = 0.5)
OPERATORS = {
    "Gemm": (lambda m, x: m.h(x), 0.0, True),
    "Conv (1x1)": (lambda m, x: m.conv(x), 0.0, True),
    "BatchNormalization": (lambda m, x: m.norm(x), 0.0, True),
    "Relu": (lambda m, x: torch.relu(m.h(x)), 50.0, True),
    "LeakyRelu": (lambda m, x: nn.functional.leaky_relu(m.h(x), 0.1), 50.0, True),
    "Abs": (lambda m, x: torch.abs(m.h(x)), 50.0, True),
    "Tanh": (lambda m, x: torch.tanh(m.h(x)), None, True),
    "Sigmoid": (lambda m, x: torch.sigmoid(m.h(x)), None, True),
    "Add + Mul": (lambda m, x: m.h(x) + 2.0 * m.h(x), 0.0, True),
    "Sub + Div + Neg": (lambda m, x: -(m.h(x) - 3.0) / 4.0, 0.0, True),
    "Concat": (lambda m, x: torch.cat([m.h(x), 2.0 * m.h(x)], 1), 0.0, True),
    "Reshape + Transpose": (lambda m, x: x.reshape(-1, 8, 8).transpose(1, 2).reshape(-1, 64), 0.0, True),
    "Unsqueeze + Squeeze": (lambda m, x: m.h(x).unsqueeze(1).squeeze(1), 0.0, True),
    "MaxPool": (lambda m, x: nn.functional.max_pool2d(x + torch.arange(64.0).reshape(1, 1, 8, 8), 2), 0.0, True),
    "AveragePool": (lambda m, x: nn.functional.avg_pool2d(x, 2), 0.0, True),
    "GlobalAveragePool": (lambda m, x: nn.functional.adaptive_avg_pool2d(m.conv(x), 1), 0.0, True),
    "TopK (sort)": (lambda m, x: torch.sort(m.h(x), dim=1).values, 0.0, True),
    "ReduceMin/ReduceMax pair": (
        lambda m, x: torch.cat(
            [m.h(x).reshape(-1, 8, 2).amin(2, keepdim=True), m.h(x).reshape(-1, 8, 2).amax(2, keepdim=True)], 2
        ).reshape(-1, 16),
        0.0,
        True,
    ),
    "ReduceMax": (lambda m, x: m.h(x).reshape(-1, 4, 4).amax(2), 0.0, False),
    "Max (two tensors)": (lambda m, x: torch.maximum(m.h(x), 2.0 * m.h(x)), 50.0, False),
}


@pytest.mark.parametrize("name", list(OPERATORS))
def test_each_supported_onnx_operator_is_bounded_strictly_and_tightly_where_exact(name, tmp_path):
    op, bias, exact = OPERATORS[name]
    model = Op(op, bias).eval()
    converted = _converted(model, tmp_path / "op.onnx")
    bound = graph_lipschitz_upper_bound(converted, SHAPE).whole_map
    x0 = torch.full((1, *SHAPE), 0.5)
    jacobian = torch.autograd.functional.jacobian(lambda x: model(x).flatten(), x0).reshape(-1, 64).double()
    local = torch.linalg.matrix_norm(jacobian, 2).item()  # a lower bound of the Lipschitz constant
    assert local <= bound * (1 + 1e-6), name
    if exact:
        assert bound <= 1.01 * local, (name, bound, local)
