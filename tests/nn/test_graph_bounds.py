"""Strict Lipschitz bounds of general graphs (lipbench.nn.graph_bounds): every rule against an
explicit operator norm, residual blocks, branches, BatchNorm, refusals, and lower bounds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipbench.nn as lnn
from lipbench.nn import graph_lipschitz_upper_bound


class Net(nn.Module):
    """``forward(x) = fn(self, x)``; tensors in ``parts`` become buffers (constants), modules submodules."""

    def __init__(self, fn, **parts):
        super().__init__()
        self.fn = fn
        for name, part in parts.items():
            if isinstance(part, nn.Module):
                self.add_module(name, part)
            else:
                self.register_buffer(name, part)

    def forward(self, x):
        return self.fn(self, x)


def jacobians(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample Jacobians ``(N, outputs, inputs)`` of ``model`` at the points ``x`` (one backward pass per output)."""
    return lnn.input_jacobian(lambda v: model(v).flatten(1), x)


def jacobian_norm(model: nn.Module, input_shape: tuple[int, ...], points: int = 1, seed: int = 0) -> float:
    """Largest spectral norm of the Jacobian over random points: the exact operator norm of a linear
    (affine) graph, a lower bound of the Lipschitz constant otherwise."""
    x = torch.randn(points, *input_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    model = model.double().eval()
    norms = [torch.autograd.functional.jacobian(lambda v: model(v[None])[0], point).reshape(-1, point.numel()) for point in x]
    return max(float(torch.linalg.matrix_norm(jacobian, 2)) for jacobian in norms)


def bound(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    return graph_lipschitz_upper_bound(model.double().eval(), input_shape).whole_map


def bn(channels: int, gamma: list[float], var: list[float], two_d: bool = True) -> nn.Module:
    layer = (nn.BatchNorm2d if two_d else nn.BatchNorm1d)(channels)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(gamma))
        layer.bias.normal_()
        layer.running_var.copy_(torch.tensor(var))
        layer.running_mean.normal_()
    return layer.eval()


GENERATOR = torch.Generator().manual_seed(0)
W64, W63, W53 = (torch.randn(*shape, generator=GENERATOR) for shape in ((6, 4), (6, 3), (5, 6)))
C6 = torch.tensor([0.5, -2.0, 1.5, 0.1, -0.3, 1.0])

# (name, model, input shape): linear graphs whose bound is the exact operator norm.
EXACT = [
    ("Linear", lambda: Net(lambda m, x: m.l(x), l=nn.Linear(6, 4)), (6,)),
    ("F.linear", lambda: Net(lambda m, x: F.linear(x, m.w, m.b), w=W64.T.contiguous(), b=torch.randn(4)), (6,)),
    ("x @ W", lambda: Net(lambda m, x: x @ m.w, w=W63), (6,)),
    ("W @ x", lambda: Net(lambda m, x: m.w @ x, w=W53), (6, 3)),
    ("torch.mm", lambda: Net(lambda m, x: torch.mm(x, m.w), w=W63), (6,)),
    ("Conv2d circular", lambda: Net(lambda m, x: m.c(x), c=nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")), (2, 6, 6)),
    (
        "Conv2d circular stride 2",
        lambda: Net(lambda m, x: m.c(x), c=nn.Conv2d(2, 3, 3, 2, 1, padding_mode="circular")),
        (2, 6, 6),
    ),
    ("BatchNorm2d alone", lambda: Net(lambda m, x: m.n(x), n=bn(2, [3.0, -0.5], [1.0, 4.0])), (2, 3, 3)),
    (
        "BatchNorm1d after Linear",
        lambda: Net(lambda m, x: m.n(m.l(x)), l=nn.Linear(6, 3), n=bn(3, [2.0, 1.0, -4.0], [1, 2, 9], False)),
        (6,),
    ),
    (
        "BN after circular conv",
        lambda: Net(
            lambda m, x: m.n(m.c(x)), c=nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"), n=bn(2, [3.0, 0.2], [0.5, 2.0])
        ),
        (2, 4, 4),
    ),
    ("the same branch twice", lambda: Net(lambda m, x: m.l(x) + torch.add(m.l(x), m.l(x), alpha=2.0), l=nn.Linear(6, 4)), (6,)),
    ("scalar mul, neg, sub const", lambda: Net(lambda m, x: -(3.0 * m.l(x)) - 1.0, l=nn.Linear(6, 4)), (6,)),
    ("mul const tensor", lambda: Net(lambda m, x: torch.mul(x, m.c), c=C6), (6,)),
    ("div const tensor", lambda: Net(lambda m, x: x.div(m.c) + m.c, c=C6), (6,)),
    ("broadcast add const", lambda: Net(lambda m, x: x.unsqueeze(-1) + m.c, c=torch.randn(6, 4)), (6,)),
    ("cat of one branch twice", lambda: Net(lambda m, x: torch.cat([m.l(x), m.l(x)], dim=1), l=nn.Linear(6, 4)), (6,)),
    ("stack", lambda: Net(lambda m, x: torch.stack([x, 2 * x], dim=-1), l=nn.Linear(6, 4)), (6,)),
    (
        "reshapes",
        lambda: Net(
            lambda m, x: (
                m.l(x)
                .view(x.size(0), 2, 2)
                .permute(0, 2, 1)
                .transpose(1, 2)
                .contiguous()
                .flatten(1)
                .unsqueeze(1)
                .squeeze(1)
                .reshape(-1, 4)
            ),
            l=nn.Linear(6, 4),
        ),
        (6,),
    ),
    (
        "Flatten, Identity, Dropout",
        lambda: Net(lambda m, x: m.d(m.i(m.f(x))), f=nn.Flatten(), i=nn.Identity(), d=nn.Dropout(0.5)),
        (2, 3, 3),
    ),
    ("AvgPool2d", lambda: Net(lambda m, x: m.p(x), p=nn.AvgPool2d(3, 2, padding=1)), (2, 7, 7)),
    ("AdaptiveAvgPool2d", lambda: Net(lambda m, x: m.p(x), p=nn.AdaptiveAvgPool2d((2, 3))), (1, 5, 7)),
    ("F.avg_pool2d", lambda: Net(lambda m, x: F.avg_pool2d(x, 2, stride=1, count_include_pad=False, padding=1)), (2, 5, 5)),
    ("F.adaptive_avg_pool2d", lambda: Net(lambda m, x: F.adaptive_avg_pool2d(x, 3)), (1, 7, 5)),
    ("sigmoid near 0 (1/4)", lambda: Net(lambda m, x: torch.sigmoid(x * 1e-9)), (3,)),
]
# Linear graphs whose rule is a strict bound, not the norm (zero-padded convs, branches, broadcasts).
BOUNDED = [
    (
        "Conv2d zeros, grouped, dilated",
        lambda: Net(lambda m, x: m.c(x), c=nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2)),
        (4, 8, 8),
    ),
    (
        "F.conv2d stride 2 groups 2",
        lambda: Net(lambda m, x: F.conv2d(x, m.w, m.b, 2, 1, 1, 2), w=torch.randn(4, 1, 3, 3), b=torch.randn(4)),
        (2, 8, 8),
    ),
    ("two branches", lambda: Net(lambda m, x: m.a(x) - m.b(x), a=nn.Linear(6, 4), b=nn.Linear(6, 4)), (6,)),
    ("cat of two branches", lambda: Net(lambda m, x: torch.cat([m.a(x), m.b(x)], 1), a=nn.Linear(6, 4), b=nn.Linear(6, 3)), (6,)),
    ("broadcast mul const", lambda: Net(lambda m, x: x.unsqueeze(-1) * m.c, c=torch.randn(4)), (6,)),
    (
        "broadcast add of branches",
        lambda: Net(lambda m, x: m.a(x).unsqueeze(1) + m.b(x).unsqueeze(2), a=nn.Linear(6, 4), b=nn.Linear(6, 3)),
        (6,),
    ),
    (
        "BN after a shared conv",
        lambda: Net(lambda m, x: m.n(m.c(x)) + m.c(x), c=nn.Conv2d(2, 2, 3, padding=1), n=bn(2, [3.0, 1.0], [1.0, 1.0])),
        (2, 5, 5),
    ),
]


@pytest.mark.parametrize("name, build, shape", EXACT, ids=[case[0] for case in EXACT])
def test_exact_rules_equal_the_explicit_operator_norm(name, build, shape):
    torch.manual_seed(1)
    model = build()
    exact = jacobian_norm(model, shape)
    assert exact > 0
    assert exact * (1 - 1e-9) <= bound(model, shape) <= exact * (1 + 1e-6)


@pytest.mark.parametrize("name, build, shape", BOUNDED, ids=[case[0] for case in BOUNDED])
def test_bounding_rules_are_above_the_explicit_operator_norm(name, build, shape):
    torch.manual_seed(2)
    model = build()
    exact = jacobian_norm(model, shape)
    assert exact * (1 - 1e-9) <= bound(model, shape) <= exact * 3


def test_a_residual_block_gets_one_plus_the_branch_bound():
    torch.manual_seed(3)
    c1, c2 = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
    model = Net(lambda m, x: x + m.c2(F.relu(m.c1(x))), c1=c1, c2=c2).double()
    conv_bound = [lnn.lipschitz_upper_bound(nn.Sequential(c), (3, 6, 6)).whole_map for c in (c1, c2)]
    result = graph_lipschitz_upper_bound(model, (3, 6, 6))
    assert result.whole_map == pytest.approx(1 + conv_bound[0] * conv_bound[1], rel=1e-12)
    assert [layer.name for layer in result.layers] == ["x", "c1", "relu", "c2", "add"]
    assert result.layers[-1].method == "sum of the branches' bounds"
    assert jacobian_norm(model, (3, 6, 6), points=8) <= result.whole_map


class BasicBlock(nn.Module):
    """torchvision's ResNet block: conv-BN-ReLU(inplace)-conv-BN, ``out += identity``, ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn1, self.bn2 = bn(3, [1.5, -0.7, 0.3], [0.5, 1.0, 2.0]), bn(3, [0.2, 2.0, -1.0], [1.0, 0.3, 4.0])
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def folded(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """The conv of ``BN(conv(x))``'s linear part: output channels scaled by gamma / sqrt(var + eps)."""
    result = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    with torch.no_grad():
        result.double().weight.copy_(
            conv.weight.double() * (norm.weight / torch.sqrt(norm.running_var + norm.eps)).view(-1, 1, 1, 1)
        )
    return result


def test_a_resnet_basic_block_folds_both_batch_norms_and_adds_the_identity():
    torch.manual_seed(10)
    block = BasicBlock().double().eval()
    result = graph_lipschitz_upper_bound(block, (3, 6, 6))
    pairs = ((block.conv1, block.bn1), (block.conv2, block.bn2))
    norms = [lnn.lipschitz_upper_bound(nn.Sequential(folded(c, n)), (3, 6, 6)).whole_map for c, n in pairs]
    assert result.whole_map == pytest.approx(1 + norms[0] * norms[1], rel=1e-12)
    methods = [layer.method.split(":")[0] for layer in result.layers if layer.name.startswith("bn")]
    assert methods == ["folded into conv1", "folded into conv2"]
    assert jacobian_norm(block, (3, 6, 6), points=16) <= result.whole_map


def test_a_two_branch_concat_gets_the_root_of_the_sum_of_squares():
    torch.manual_seed(4)
    a, b = nn.Linear(6, 4), nn.Linear(6, 3)
    model = Net(lambda m, x: torch.cat([m.a(x), F.relu(m.b(x))], dim=1), a=a, b=b)
    expected = math.hypot(lnn.dense_operator_norm(a.weight), lnn.dense_operator_norm(b.weight))
    assert bound(model, (6,)) == pytest.approx(expected, rel=1e-12)
    assert jacobian_norm(model, (6,), points=8) <= expected


def test_batch_norm_is_folded_into_the_conv_it_follows():
    torch.manual_seed(5)
    conv, norm = nn.Conv2d(2, 3, 3, stride=2, padding=1).double(), bn(3, [4.0, -0.5, 1.0], [0.25, 2.0, 1.0]).double()
    result = graph_lipschitz_upper_bound(Net(lambda m, x: m.n(m.c(x)), c=conv, n=norm), (2, 8, 8))
    expected = lnn.lipschitz_upper_bound(nn.Sequential(folded(conv, norm)), (2, 8, 8)).whole_map
    assert result.whole_map == pytest.approx(expected, rel=1e-12)
    assert result.layers[-1].method.startswith("folded into c:")
    unfolded = lnn.lipschitz_upper_bound(nn.Sequential(conv), (2, 8, 8)).whole_map * 4.0 / math.sqrt(0.25 + norm.eps)
    assert result.whole_map < unfolded


def test_batch_norm_alone_uses_its_largest_scale_where_1_would_be_unsound():
    norm = bn(2, [3.0, 0.5], [1.0, 4.0])
    model = Net(lambda m, x: m.n(F.relu(x)), n=norm)  # after ReLU: nothing to fold into
    result = graph_lipschitz_upper_bound(model.double(), (2, 3, 3))
    assert result.whole_map == pytest.approx(3.0 / math.sqrt(1.0 + norm.eps), rel=1e-12)
    assert jacobian_norm(model, (2, 3, 3), points=4) > 2.9  # > 1: a bound of 1 would be wrong
    assert "max |gamma / sqrt(var + eps)|" in result.layers[-1].method


def test_batch_norm_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="training mode"):
        graph_lipschitz_upper_bound(Net(lambda m, x: m.n(x), n=nn.BatchNorm2d(2)), (2, 3, 3))


ACTIVATIONS = [
    ("F.relu", lambda m, x: F.relu(m.l(x)), 1.0),
    ("nn.ReLU inplace", lambda m, x: m.relu(m.l(x)), 1.0),
    ("leaky_relu slope 3", lambda m, x: F.leaky_relu(m.l(x), 3.0), 3.0),
    ("nn.LeakyReLU", lambda m, x: m.leaky(m.l(x)), 2.0),
    ("elu alpha 2", lambda m, x: F.elu(m.l(x), alpha=2.0), 2.0),
    ("nn.ELU", lambda m, x: m.elu(m.l(x)), 1.5),
    ("abs", lambda m, x: m.l(x).abs(), 1.0),
    ("tanh", lambda m, x: torch.tanh(m.l(x)), 1.0),
    ("nn.Tanh, nn.Sigmoid", lambda m, x: m.sigmoid(m.tanh(m.l(x))), 0.25),
    ("sort values", lambda m, x: torch.sort(m.l(x), dim=1).values + torch.sort(m.l(x), 1, True)[0], 2.0),
    ("GroupSort, GroupSort2, FullSort", lambda m, x: m.full(m.gs2(m.gs(m.l(x)))), 1.0),
]


@pytest.mark.parametrize("name, fn, factor", ACTIVATIONS, ids=[case[0] for case in ACTIVATIONS])
def test_activations_multiply_by_their_constant(name, fn, factor):
    torch.manual_seed(6)
    parts = dict(l=nn.Linear(5, 4), relu=nn.ReLU(inplace=True), leaky=nn.LeakyReLU(-2.0), elu=nn.ELU(1.5))
    parts |= dict(tanh=nn.Tanh(), sigmoid=nn.Sigmoid(), gs=lnn.GroupSort(2), gs2=lnn.GroupSort2(), full=lnn.FullSort())
    model = Net(fn, **parts)
    result = bound(model, (5,))
    assert result == pytest.approx(factor * lnn.dense_operator_norm(parts["l"].weight), rel=1e-12)
    assert jacobian_norm(model, (5,), points=16) <= result * (1 + 1e-9)


@pytest.mark.parametrize(
    "fn, shape",
    [
        (lambda m, x: F.max_pool2d(x, 3, stride=2, padding=1), (2, 7, 7)),
        (lambda m, x: m.p(x), (1, 6, 6)),
        (lambda m, x: F.adaptive_max_pool2d(x, (2, 3)), (1, 5, 7)),
        (lambda m, x: m.l2(x) + m.g(x).unsqueeze(-1).unsqueeze(-1), (2, 4, 4)),
    ],
)
def test_max_and_l2_pooling_bounds_are_above_the_gradient_norms(fn, shape):
    model = Net(fn, p=nn.MaxPool2d(3, 1), l2=lnn.L2NormPool2d(2), g=lnn.GlobalL2NormPool2d())
    assert jacobian_norm(model, shape, points=32) <= bound(model, shape) * (1 + 1e-9)


class Residual(nn.Module):
    """A residual block that certifies its own bound (``1 + ||W||``): a leaf of the graph."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.inner(x)

    def lipschitz_bound(self, input_shape):
        return 1.0 + lnn.dense_operator_norm(self.inner.weight), "1 + ||W|| (residual)"


def test_a_certified_block_is_a_leaf_with_its_own_bound():
    torch.manual_seed(7)
    block, head = Residual(), nn.Linear(4, 3)
    result = graph_lipschitz_upper_bound(Net(lambda m, x: m.head(m.block(x)), block=block, head=head), (4,))
    assert result.layers[1].name == "block" and result.layers[1].method == "1 + ||W|| (residual)"
    assert result.whole_map == pytest.approx(block.lipschitz_bound((4,))[0] * lnn.dense_operator_norm(head.weight), rel=1e-12)


def aliased_relu(m, x):
    y = m.l(x)
    return y + F.relu(y, inplace=True)  # y is the ReLU's output when the sum reads it


@pytest.mark.parametrize(
    "fn, match",
    [
        (lambda m, x: torch.exp(x), r"node 'exp' \(call_function exp\) is not supported; supported: Linear"),
        (lambda m, x: x * x, r"node 'mul' .* product or quotient of input-dependent tensors"),
        (lambda m, x: m.l(x) / x, r"node 'truediv' .* quotient"),
        (lambda m, x: F.linear(x, m.l(x)), r"node 'linear' .* depends on the input where a constant is needed"),
        (lambda m, x: F.softmax(x, dim=1), r"node 'softmax' .* not supported"),
        (lambda m, x: m.soft(x), r"node 'soft' \(call_module Softplus\) is not supported"),
        (lambda m, x: torch.cat([x, x], dim=0), r"node 'cat' .* batch dim"),
        (lambda m, x: x.view(-1), r"node 'view' .* batch"),
        (lambda m, x: x.flatten(), r"node 'flatten' .* batch dim"),
        (lambda m, x: x.transpose(0, 1), r"node 'transpose' .* batch dim"),
        (lambda m, x: x[:, :2], r"node 'getitem' .* not supported"),
        (lambda m, x: torch.sort(x, dim=1)[1].double(), r"node 'getitem' .* not supported"),
        (lambda m, x: x * x.size(0), r"changes with the batch size"),
        (lambda m, x: x * torch.randn(3, dtype=torch.float64), r"does not reproduce the model \(randomness"),
        (lambda m, x: F.dropout(x, 0.5, training=True), r"node 'dropout' .* training|does not reproduce the model"),
        (aliased_relu, r"node 'relu' .* updates l in place while add read it"),
        (lambda m, x: x / m.z, r"node 'truediv' .* non-finite bound"),
    ],
    ids=[
        "exp",
        "x*x",
        "divide by x",
        "dynamic weight",
        "softmax",
        "Softplus",
        "cat batch",
        "view(-1)",
        "flatten()",
        "transpose batch",
        "indexing",
        "sort indices",
        "batch size factor",
        "random factor",
        "dropout training",
        "in-place alias",
        "zero divisor",
    ],
)
def test_unsupported_or_unsound_uses_are_refused_with_the_node_named(fn, match):
    model = Net(fn, l=nn.Linear(3, 3), soft=nn.Softplus(), z=torch.tensor([1.0, 0.0, 2.0])).double()
    with pytest.raises(ValueError, match=match):
        graph_lipschitz_upper_bound(model, (3,))


def test_an_in_place_update_fx_cannot_see_is_refused():
    def aliased(m, x):
        y = m.l(x)
        z = y
        y += x  # fx records y + x; the model also changes z
        return z + y

    with pytest.raises(ValueError, match="does not reproduce the model"):
        graph_lipschitz_upper_bound(Net(aliased, l=nn.Linear(3, 3)), (3,))
    safe = Net(lambda m, x: F.relu(m.l(x), inplace=True) + x, l=nn.Linear(3, 3))
    assert bound(safe, (3,)) == pytest.approx(1 + lnn.dense_operator_norm(safe.l.weight), rel=1e-12)


def test_a_graph_ending_in_a_dense_layer_gets_per_logit_and_pairwise_bounds():
    torch.manual_seed(8)
    model = Net(lambda m, x: m.out(x + F.relu(m.a(x))), a=nn.Linear(5, 5), out=nn.Linear(5, 4)).double()
    result = graph_lipschitz_upper_bound(model, (5,))
    prefix, weight = 1 + lnn.dense_operator_norm(model.a.weight), model.out.weight.detach()
    assert result.prefix == pytest.approx(prefix, rel=1e-12)
    assert result.whole_map == pytest.approx(prefix * lnn.dense_operator_norm(weight), rel=1e-12)
    for i in range(4):
        assert result.per_logit[i] == pytest.approx(min(prefix * float(weight[i].norm()), result.whole_map), rel=1e-12)
        for j in range(4):
            caps = (prefix * float((weight[i] - weight[j]).norm()), math.sqrt(2) * result.whole_map)
            expected = 0.0 if i == j else min(*caps, result.per_logit[i] + result.per_logit[j])
            assert result.pairwise[i][j] == pytest.approx(expected, rel=1e-12)
    x = torch.randn(64, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    jacobian = jacobians(model.eval(), x)
    assert (jacobian.norm(dim=-1).amax(0) <= torch.tensor(result.per_logit) * (1 + 1e-9)).all()
    differences = (jacobian[:, :, None] - jacobian[:, None]).norm(dim=-1).amax(0)
    assert (differences <= torch.tensor(result.pairwise) * (1 + 1e-9) + 1e-12).all()
    assert max(result.per_logit) < result.whole_map  # the per-logit bound is the better one here


class RandomGraph(nn.Module):
    """Folded and lone BatchNorm, a residual block, a concat, matmul, pooling, sort and activations."""

    def __init__(self, seed: int, pooling: str):
        super().__init__()
        torch.manual_seed(seed)
        self.pooling = pooling
        self.c1, self.c2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=2, padding_mode="circular")
        self.c3 = nn.Conv2d(8, 4, 3, stride=2, padding=1, dilation=1)
        self.n1, self.n2 = bn(4, torch.randn(4).mul(3).tolist(), [0.5, 1, 2, 4]), bn(4, [2.0, -3.0, 0.5, 1.0], [1, 1, 1, 1])
        self.register_buffer("w", torch.randn(16, 6))
        self.out = nn.Linear(6, 5)

    def forward(self, x):
        h = self.n1(self.c1(x))
        h = h + self.c2(F.leaky_relu(h, 0.3)) * 0.7
        h = torch.cat([torch.tanh(h), F.elu(self.n2(F.relu(h)), 1.5)], dim=1)
        h = self.c3(h)
        h = F.max_pool2d(h, 2) if self.pooling == "max" else F.avg_pool2d(h, 2)
        h = torch.sort(h.flatten(1), dim=1).values @ self.w
        return self.out(torch.sigmoid(h) * 4 - h.abs())


@pytest.mark.parametrize("seed", range(4))
def test_gradient_norms_of_random_graphs_never_exceed_the_graph_bound(seed):
    model = RandomGraph(seed, "max" if seed % 2 else "avg").double().eval()
    result = graph_lipschitz_upper_bound(model, (2, 8, 8))
    x = torch.randn(48, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    jacobian = jacobians(model, x)
    assert float(torch.linalg.matrix_norm(jacobian, 2).max()) <= result.whole_map * (1 + 1e-9)
    assert (jacobian.norm(dim=-1).amax(0) <= torch.tensor(result.per_logit) * (1 + 1e-9)).all()
    assert [layer.name for layer in result.layers if layer.method.startswith("folded")] == ["n1"]


@pytest.mark.parametrize("kit", ["gnp", "lip1", "unconstrained"])
@pytest.mark.parametrize(
    "architecture, shape, classes", [("moons_dense", (2,), 2), ("digits_dense", (64,), 10), ("mnist_cnn", (1, 28, 28), 10)]
)
def test_chains_get_the_same_bounds_as_lipschitz_upper_bound(kit, architecture, shape, classes):
    from lipbench.methods.architectures import KITS, build_model

    assert kit in KITS
    torch.manual_seed(9)
    model = build_model(architecture, kit, shape, classes)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    chain, graph = lnn.lipschitz_upper_bound(model, shape), graph_lipschitz_upper_bound(model, shape)
    assert graph.whole_map == pytest.approx(chain.whole_map, rel=1e-12)
    assert graph.per_logit == pytest.approx(chain.per_logit, rel=1e-12)
    assert graph.prefix == pytest.approx(chain.prefix, rel=1e-12)
    assert (graph.pairwise is None) == (chain.pairwise is None)
    for graph_row, chain_row in zip(graph.pairwise or (), chain.pairwise or ()):
        assert graph_row == pytest.approx(chain_row, rel=1e-12)
    chain_layers = [(layer.name, layer.bound) for layer in chain.layers]
    assert [layer.name for layer in graph.layers[1:]] == [name for name, _ in chain_layers]
