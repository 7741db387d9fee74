"""Strict L2 Lipschitz upper bounds of general torch graphs (residual blocks, branches), not only chains.

The exported model is traced with ``torch.fx`` and run on zero inputs of batch 1 and 2; each node gets a strict
bound of the Lipschitz constant of the map from the input to its value, from its inputs' bounds only, by rules
that compose (each docstring says why it is sound). Any other operator is refused, never guessed.
"""

from __future__ import annotations

import math
import operator
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import GraphModule, Node, Tracer
from torch.fx.node import map_arg
from torch.fx.passes.shape_prop import ShapeProp

from lipbench.nn import layers
from lipbench.nn.bounds import CertifiedBlock, LayerBound, LipschitzUpperBound, _leaf_bound, _pool_bound, dense_operator_norm
from lipbench.nn.conv_bounds import conv2d_geometry, conv2d_norm_plan, conv2d_operator_norm
from lipbench.nn.export import check_finite, export
from lipbench.nn.graph_ops import GRAPH_OP_RULES, OPS_SUPPORTED, standardize_onnx
from lipbench.nn.graph_ops import Refused as _Refused

__all__ = ["graph_lipschitz_upper_bound", "SUPPORTED_OPERATORS"]

_PREFIX = "graph_lipschitz_upper_bound"
_QUERIES = ("shape", "ndim", "dtype", "device", "size", "dim")  # they depend on the input's shape only
SUPPORTED_OPERATORS = (
    "Linear / F.linear / matmul / @ (constant 2-D weight), Conv2d / F.conv2d (constant weight, zeros or circular padding), "
    "BatchNorm1d/2d (eval), add / sub, mul / div by a constant, neg, cat / stack, flatten / reshape / view / permute / "
    "transpose / contiguous / clone / squeeze / unsqueeze (batch dim kept), (Adaptive)AvgPool2d / (Adaptive)MaxPool2d "
    "(or F.*), L2NormPool2d / GlobalL2NormPool2d, ReLU, LeakyReLU, ELU, GroupSort / GroupSort2 / FullSort, abs, tanh, "
    f"sigmoid, sort (values), Identity, Dropout (eval), CertifiedBlock modules, {OPS_SUPPORTED}; any operator on constants only"
)


@dataclass
class _Graph:
    """The traced graph, every node's value at batch 1 and 2 (zero inputs) and the bounds so far."""

    module: GraphModule
    values: dict[Node, Any]
    values2: dict[Node, Any]
    bounds: dict[Node, float] = field(default_factory=dict)

    def tracked(self, arg: Any) -> bool:
        return isinstance(arg, Node) and arg in self.bounds

    def bound(self, arg: Any) -> float:
        return self.bounds.get(arg, 0.0) if isinstance(arg, Node) else 0.0

    def tensor(self, node: Node) -> Tensor:  # torch.sort gives (values, indices)
        return self.values[node][0] if isinstance(self.values[node], tuple) else self.values[node]

    def shape(self, node: Node) -> tuple[int, ...]:
        return tuple(self.tensor(node).shape[1:])

    def constant(self, arg: Any, same: bool = True) -> Any:
        """``arg`` with its nodes' values: input-independent, and with ``same`` equal at batch 1 and 2."""
        return map_arg(arg, lambda node: self._value(node, same))

    def _value(self, node: Node, same: bool) -> Any:
        if node in self.bounds:
            raise _Refused(f"{node.name} depends on the input where a constant is needed (a dynamic weight or factor)")
        first, second = self.values[node], self.values2[node]
        try:  # tensors: same shape and entries; containers of several tensors count as different
            equal = (
                torch.equal(first, second) if isinstance(first, Tensor) and isinstance(second, Tensor) else bool(first == second)
            )
        except RuntimeError:
            equal = False
        if same and not equal:
            raise _Refused(f"the constant {node.name} changes with the batch size or between calls")
        return first

    def spread(self, node: Node, operand: Node) -> float:
        """Broadcasting repeats every entry of ``operand`` the same number ``r`` of times: ``sqrt(r)``."""
        return math.sqrt(max(1.0, math.prod(self.shape(node)) / max(1, math.prod(self.shape(operand)))))


def _bind(node: Node, names: tuple[str, ...], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The node's arguments by parameter name (``names`` in signature order)."""
    bound = dict(defaults or {}) | dict(zip(names, node.args))
    unexpected = [key for key in node.kwargs if key not in names or key in names[: len(node.args)]]
    if len(node.args) > len(names) or unexpected or any(name not in bound | node.kwargs for name in names):
        raise _Refused(f"expects the arguments ({', '.join(names)}), got {len(node.args)} and {list(node.kwargs)}")
    return bound | dict(node.kwargs)


def _check_in_place(g: _Graph, node: Node, mutated: Node) -> None:
    """An in-place update is the graph's map only if nothing reads the old value (or a view: same storage) after it."""
    nodes, target = list(node.graph.nodes), g.values[mutated].untyped_storage().data_ptr()
    for other in nodes[: nodes.index(node)]:
        value, late = g.values.get(other), [user.name for user in other.users if nodes.index(user) > nodes.index(node)]
        if late and isinstance(value, Tensor) and value.untyped_storage().data_ptr() == target:
            raise _Refused(f"it updates {mutated.name} in place while {', '.join(late)} read it (or a view) afterwards")


_UNARY_NAMES = ("relu", "abs", "tanh", "sigmoid", "neg", "clone", "flatten", "transpose", "unsqueeze", "squeeze", "sort")
_UNARY = {name: name for name in (*_UNARY_NAMES, "reshape", "permute")} | {getattr(torch, n): n for n in _UNARY_NAMES}
_UNARY |= {F.relu: "relu", F.tanh: "tanh", F.sigmoid: "sigmoid", operator.abs: "abs", operator.neg: "neg", F.elu: "elu"}
_UNARY |= {F.leaky_relu: "leaky_relu", F.dropout: "dropout", "contiguous": "clone", "view": "reshape", torch.reshape: "reshape"}
_UNARY |= {torch.permute: "permute", operator.getitem: "values", getattr: "values"}
_KWARGS = set("inplace negative_slope alpha p training dim dim0 dim1 start_dim end_dim dims shape descending stable".split())
_INPLACE_INDEX = {"relu": 0, "leaky_relu": 1, "elu": 1, "dropout": 2}
_METHODS = {"relu": "1 (ReLU)", "abs": "1 (||a| - |b|| <= |a - b|)", "tanh": "1 (tanh' <= 1)", "sort": "1 (sorting)"}
_METHODS |= {"values": "1 (values of a sort)", "dropout": "1 (eval mode: identity)"}


def _unary(g: _Graph, node: Node) -> tuple[float, str]:
    """Activations (sup of the derivative), sort values, reshape-like ops (1) on dims other than the batch dim."""
    name, x = _UNARY[node.target], node.args[0] if node.args else None
    if not g.tracked(x) or set(node.kwargs) - _KWARGS:
        raise _Refused("its first argument must be the input-dependent tensor, its keywords known ones")
    args, kwargs = g.constant((node.args[1:], node.kwargs), same=name != "reshape")  # sizes may name the batch size

    def arg(index: int, key: str, default: Any = None) -> Any:
        return args[index] if len(args) > index else kwargs.get(key, default)

    if (name == "values") != isinstance(g.values[x], tuple) or (name == "values" and arg(0, "") not in (0, "values")):
        raise _Refused(None)  # only a sort's values (its indices are piecewise constant), no other indexing
    ndim, squeezed = g.tensor(x).ndim, arg(0, "dim")
    listed = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
    sequence = tuple(listed or kwargs.get("dims", kwargs.get("shape", ())))
    dims = {"flatten": [arg(0, "start_dim", 0)], "transpose": [arg(0, "dim0"), arg(1, "dim1")], "sort": [arg(0, "dim", -1)]}
    dims["squeeze"] = list(squeezed) if isinstance(squeezed, (tuple, list)) else [squeezed]
    touched = [d % ndim for d in dims.get(name, []) if isinstance(d, int)]
    touched += [squeezed % (ndim + 1)] if name == "unsqueeze" else []
    touched += [0] if name == "permute" and sequence and sequence[0] % ndim != 0 else []
    if 0 in touched:
        raise _Refused("it acts on the batch dim (dim 0); lipbench bounds the map of one sample")
    if name in ("reshape", "permute") and not all(isinstance(v, int) for v in sequence):
        raise _Refused(f"{name} needs integer sizes (a dtype view reinterprets bits)")
    if name == "dropout" and arg(1, "training", True):
        raise _Refused("dropout in training mode is random; evaluate in eval mode")
    if name in _INPLACE_INDEX and arg(_INPLACE_INDEX[name], "inplace", False):
        _check_in_place(g, node, x)
    slope = {"leaky_relu": ("negative_slope", 0.01), "elu": ("alpha", 1.0)}.get(name)
    if slope is not None:
        return max(1.0, abs(float(arg(0, *slope)))) * g.bound(x), f"max(1, |{slope[0]}|)"
    factor, method = (0.25, "1/4 (sigmoid' <= 1/4)") if name == "sigmoid" else (1.0, _METHODS.get(name, "1 (same entries)"))
    return factor * g.bound(x), method


_ARITHMETIC = {operator.add: "add", operator.sub: "sub", operator.mul: "mul", operator.truediv: "div", torch.div: "div"}
_ARITHMETIC |= {getattr(torch, k): k for k in ("add", "sub", "mul")} | {k: k for k in ("add", "sub", "mul", "div")}


def _arithmetic(g: _Graph, node: Node) -> tuple[float, str]:
    """Sum/difference: the triangle inequality; product/quotient with a constant: its max/min magnitude."""
    kind = _ARITHMETIC[node.target]
    extra = {"add": ("alpha",), "sub": ("alpha",), "mul": (), "div": ("rounding_mode",)}[kind]
    args = _bind(node, ("input", "other", *extra), {"alpha": 1, "rounding_mode": None})
    x, y = args["input"], args["other"]
    if kind in ("add", "sub"):
        alpha = abs(float(g.constant(args["alpha"])))
        bound = sum(scale * g.bound(t) * g.spread(node, t) for t, scale in ((x, 1.0), (y, alpha)) if g.tracked(t))
        return bound, "sum of the branches' bounds" if g.tracked(x) and g.tracked(y) else "a constant added: same bound"
    if g.tracked(y) and (kind == "div" or g.tracked(x)):
        raise _Refused("a product or quotient of input-dependent tensors has no global Lipschitz bound")
    if args["rounding_mode"] is not None:
        raise _Refused("division with rounding is not Lipschitz")
    operand, constant = (y, x) if g.tracked(y) else (x, y)
    magnitude = torch.as_tensor(g.constant(constant), dtype=torch.float64).abs().flatten()
    factor = float(magnitude.max() if kind == "mul" else 1.0 / magnitude.min())  # a zero divisor: inf, refused
    method = "max |c| of the constant factor" if kind == "mul" else "1 / min |c| of the constant divisor"
    return factor * g.bound(operand) * g.spread(node, operand), method


def _concat(g: _Graph, node: Node) -> tuple[float, str]:
    """``||(f, g)||^2 = ||f||^2 + ||g||^2``: the root of the sum of the squared bounds."""
    args = _bind(node, ("tensors", "dim"), {"dim": 0})
    if g.constant(args["dim"]) % g.tensor(node).ndim == 0:
        raise _Refused("concatenating along the batch dim mixes samples")
    return math.sqrt(sum(g.bound(t) ** 2 for t in args["tensors"])), "sqrt of the sum of squared bounds"


_WINDOW = ("kernel_size", "stride", "padding")
_POOLS = {F.avg_pool2d: (nn.AvgPool2d, (*_WINDOW, "ceil_mode", "count_include_pad", "divisor_override"))}
_POOLS |= {F.max_pool2d: (nn.MaxPool2d, (*_WINDOW, "dilation", "ceil_mode", "return_indices"))}
_POOLS |= {F.adaptive_avg_pool2d: (nn.AdaptiveAvgPool2d, ("output_size",))}
_POOLS |= {F.adaptive_max_pool2d: (nn.AdaptiveMaxPool2d, ("output_size", "return_indices"))}


def _pools(g: _Graph, node: Node) -> tuple[float, str]:
    """F.* pooling: the module's constant from :mod:`lipbench.nn.bounds` (exact for averages)."""
    cls, names = _POOLS[node.target]
    x, args = node.args[0] if node.args else None, dict(zip(names, node.args[1:])) | dict(node.kwargs)
    if len(node.args) > len(names) + 1 or not set(args) <= set(names) or not g.tracked(x):
        raise _Refused(f"expects (input, {', '.join(names)}) with an input-dependent input")
    factor, method = _pool_bound(node.name, cls(**g.constant(args)), g.shape(x))
    return factor * g.bound(x), method


_Affine = namedtuple("_Affine", "input weight conv")  # dense (``conv is None``) or conv2d, constant float64 weight
_CONV = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_AFFINE = {F.linear: _CONV[:3], F.conv2d: _CONV} | dict.fromkeys((torch.matmul, operator.matmul, torch.mm, "matmul", "mm"), ())


def _matmul(g: _Graph, node: Node) -> tuple:
    """``x @ W`` is the dense map ``W^T`` on the last dim, ``W @ x`` the map ``W`` on the second last."""
    x, w = _bind(node, ("input", "other")).values()
    if g.tracked(x) and g.tracked(w):
        raise _Refused("a product of input-dependent tensors has no global Lipschitz bound")
    operand, weight, left = (w, g.constant(x), True) if g.tracked(w) else (x, g.constant(w), False)
    if not isinstance(weight, Tensor) or weight.ndim != 2 or g.tensor(operand).ndim < (3 if left else 2):
        raise _Refused("needs a constant 2-D matrix, and W @ x inputs with dims beyond (batch, features)")
    return _Affine(operand, (weight if left else weight.T).detach().double(), None)


def _affine(g: _Graph, node: Node) -> tuple | None:
    """The affine view of a Linear/Conv2d module, F.linear/F.conv2d or matmul node, else ``None``."""
    if node.op == "call_module":
        module = g.module.get_submodule(node.target)
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or len(node.args) != 1 or node.kwargs:
            return None
        return _Affine(node.args[0], module.weight.detach().double(), module if isinstance(module, nn.Conv2d) else None)
    if node.target not in _AFFINE or not _AFFINE[node.target]:
        return _matmul(g, node) if node.target in _AFFINE else None
    linear = node.target is F.linear
    args = _bind(node, _AFFINE[node.target], {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
    options = dict(g.constant({key: value for key, value in args.items() if key != "input"}))  # a dynamic bias is refused too
    weight = options.pop("weight")
    if not isinstance(weight, Tensor) or weight.ndim != (2 if linear else 4):
        raise _Refused("the weight must be a constant tensor (2-D for linear, 4-D for conv2d)")
    if linear:
        return _Affine(args["input"], weight.detach().double(), None)
    del options["bias"]
    conv = nn.Conv2d(weight.shape[1] * options["groups"], weight.shape[0], weight.shape[2:], **options, bias=False, device="meta")
    return _Affine(args["input"], weight.detach().double(), conv)


def _affine_bound(g: _Graph, node: Node, affine: tuple, scale: Tensor | None = None) -> tuple[float, str]:
    """Input bound times the exact norm of ``W`` (or ``diag(scale) W``: a folded BatchNorm), a conv's by its plan."""
    weight = affine.weight if scale is None else affine.weight * scale.reshape(-1, *[1] * (affine.weight.ndim - 1))
    if affine.conv is None:
        return dense_operator_norm(weight) * g.bound(affine.input), "svd"
    shape = g.shape(affine.input)
    if len(shape) != 3:
        raise _Refused(f"a 2-D convolution needs (batch, channels, height, width) inputs, got (batch, {shape})")
    plan = conv2d_norm_plan(conv2d_geometry(affine.conv, (shape[1], shape[2]), f"{_PREFIX}: node {node.name!r}"))
    return float(conv2d_operator_norm(weight, plan)) * g.bound(affine.input), plan.describe()


def _batch_norm(g: _Graph, node: Node, module: nn.Module, x: Node) -> tuple[float, str]:
    """Eval BatchNorm is ``diag(s) x + c``, ``s = gamma / sqrt(var + eps)``: folded into the Linear/Conv it
    alone follows (``diag(s) W`` is the linear part of ``BN(W x + b)``), else the diagonal map's norm ``max |s|``."""
    if module.training or module.running_var is None:
        raise _Refused("BatchNorm in training mode (or without running statistics) uses batch statistics; call model.eval()")
    gamma = 1.0 if module.weight is None else module.weight.detach().double()
    scale = torch.rsqrt(module.running_var.detach().double() + module.eps) * gamma
    rank, affine = 4 if isinstance(module, nn.BatchNorm2d) else 2, _affine(g, x) if len(x.users) == 1 else None
    if affine is not None and g.tensor(x).ndim == rank == affine.weight.ndim and affine.weight.shape[0] == scale.numel():
        bound, method = _affine_bound(g, node, affine, scale)
        return bound, f"folded into {x.name}: {method} of diag(gamma / sqrt(var + eps)) W"
    return float(scale.abs().max()) * g.bound(x), "max |gamma / sqrt(var + eps)| (eval mode)"


_DELEGATED = (nn.ReLU, nn.Identity, nn.Dropout, nn.LeakyReLU, nn.Flatten, nn.Unflatten, *(cls for cls, _ in _POOLS.values()))
_LIPBENCH_LEAVES = tuple(getattr(layers, name) for name in layers.__all__ if isinstance(getattr(layers, name), type))
_DIMS = {layers.GroupSort: "dim", layers.GroupSort2: "dim", layers.FullSort: "dim", nn.Flatten: "start_dim", nn.Unflatten: "dim"}
_SMOOTH = {nn.Tanh: (1.0, "1 (tanh' <= 1)"), nn.Sigmoid: (0.25, "1/4 (sigmoid' <= 1/4)")}


def _module_rule(g: _Graph, node: Node) -> tuple[float, str]:
    """Leaf modules: their own bound (``CertifiedBlock``), the rules above, or lipbench's chain rules."""
    module, x = g.module.get_submodule(node.target), node.args[0] if len(node.args) == 1 and not node.kwargs else None
    if not g.tracked(x):
        raise _Refused("a leaf module must be called on one input-dependent tensor")
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return _affine_bound(g, node, _affine(g, node))
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _batch_norm(g, node, module, x)
    if any(getattr(module, a) % g.tensor(x).ndim == 0 for cls, a in _DIMS.items() if isinstance(module, cls)):
        raise _Refused("it acts on the batch dim (dim 0); lipbench bounds the map of one sample")
    if getattr(module, "inplace", False):
        _check_in_place(g, node, x)
    if isinstance(module, (CertifiedBlock, *_DELEGATED, *_LIPBENCH_LEAVES)):  # a CertifiedBlock: its own bound
        factor, method = _leaf_bound(node.target, module, g.shape(x))
    elif isinstance(module, (nn.Tanh, nn.Sigmoid, nn.ELU)):
        factor, method = _SMOOTH.get(type(module)) or (max(1.0, abs(module.alpha)), "max(1, |alpha|)")
    else:
        raise _Refused(None)
    return factor * g.bound(x), method


_RULES: dict[Any, Callable[[_Graph, Node], tuple[float, str]]] = dict.fromkeys(_UNARY, _unary) | dict.fromkeys(_POOLS, _pools)
_RULES |= dict.fromkeys(_ARITHMETIC, _arithmetic) | dict.fromkeys((torch.cat, torch.concat, torch.stack), _concat)
_RULES |= dict.fromkeys(_AFFINE, lambda g, node: _affine_bound(g, node, _affine(g, node))) | GRAPH_OP_RULES


def _describe(g: _Graph, node: Node) -> str:
    """The node's operator: a module's type, a function's or a method's name."""
    if node.op == "call_module":
        return type(g.module.get_submodule(node.target)).__name__
    return f".{node.target}()" if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))


class _LeafTracer(Tracer):
    """Keeps lipbench's layers and ``CertifiedBlock`` modules as leaves (bounded as wholes)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (*_LIPBENCH_LEAVES, CertifiedBlock)) or super().is_leaf_module(m, module_qualified_name)


def _trace(plain: nn.Module, input_shape: tuple[int, ...]) -> _Graph:
    """Trace, propagate zeros of batch 2 then 1; the graph must reproduce the model (fx records ``x += y`` out of place)."""
    try:
        module = GraphModule(plain, _LeafTracer().trace(plain))
        tensor = next(iter(plain.parameters()), next(iter(plain.buffers()), torch.zeros(())))
        options = {"dtype": tensor.dtype if tensor.is_floating_point() else torch.float32, "device": tensor.device}
        propagations = [ShapeProp(module), ShapeProp(module)]  # values kept: batch 2, then 1 (its shapes stay in meta)
        for batch, propagation in zip((2, 1), propagations):
            propagation.garbage_collect_values = False
            propagation.propagate(torch.zeros(batch, *input_shape, **options))
        x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(**options)
        traced, direct = module(x), plain(x)
    except Exception as error:
        raise ValueError(f"{_PREFIX}: cannot trace or run {type(plain).__name__} on (batch, *{input_shape}): {error}") from error
    if isinstance(direct, Tensor) and not (isinstance(traced, Tensor) and torch.allclose(traced, direct, rtol=1e-5, atol=1e-6)):
        raise ValueError(f"{_PREFIX}: the traced graph does not reproduce the model (randomness or in-place aliasing)")
    return _Graph(module, propagations[1].env, propagations[0].env)


def _node_bound(g: _Graph, node: Node) -> tuple[float, str]:
    """The node's bound and rule, its batch dim checked; ``ValueError`` naming it otherwise."""
    try:
        rule = _module_rule if node.op == "call_module" else _RULES.get(node.target)
        if node.op != "placeholder" and rule is None:
            raise _Refused(None)
        bound, method = (1.0, "the input") if node.op == "placeholder" else rule(g, node)
        first, second = g.tensor(node), g.values2[node]
        second = second[0] if isinstance(second, tuple) else second
        if not (isinstance(first, Tensor) and isinstance(second, Tensor) and first.ndim and second.ndim):
            raise _Refused("its value is not a tensor with a batch dim")
        if first.shape[0] != 1 or second.shape[0] != 2 or first.shape[1:] != second.shape[1:]:
            raise _Refused(f"it does not keep the batch as dim 0 ({tuple(first.shape)} at batch 1, {tuple(second.shape)} at 2)")
    except _Refused as refusal:
        reason = f"is refused: {refusal}" if refusal.args[0] else f"is not supported; supported: {SUPPORTED_OPERATORS}"
        raise ValueError(f"{_PREFIX}: node {node.name!r} ({node.op} {_describe(g, node)}) {reason}") from None
    if not math.isfinite(bound):
        raise ValueError(f"{_PREFIX}: node {node.name!r} ({node.op} {_describe(g, node)}) has a non-finite bound ({bound})")
    return bound, method


def _result(g: _Graph, output: Node, bounds: tuple[LayerBound, ...]) -> LipschitzUpperBound:
    """Whole-map bound; per-logit and pairwise ones if the graph ends in a dense layer, as ``lipschitz_upper_bound``."""
    (result,) = output.args
    value = g.values.get(result) if isinstance(result, Node) else result
    if not isinstance(value, Tensor):
        raise ValueError(f"{_PREFIX}: the model must return one tensor of logits, not {type(value).__name__}")
    whole_map = g.bound(result)
    affine = _affine(g, result) if g.tracked(result) else None
    if affine is None or affine.conv is not None or value.ndim != 2:
        return LipschitzUpperBound(whole_map=whole_map, per_logit=(whole_map,) * value.shape[-1], layers=bounds)
    prefix, weight, cap = g.bound(affine.input), affine.weight, math.sqrt(2.0) * whole_map
    per_logit = tuple(min(float(norm) * prefix, whole_map) for norm in torch.linalg.vector_norm(weight, dim=1))
    # f_i - f_j = (w_i - w_j) . h + b_i - b_j is (prefix ||w_i - w_j||)-Lipschitz; the whole-map and
    # per-logit bounds of the same difference cap it.
    rows = [torch.linalg.vector_norm(weight[i] - weight, dim=1).tolist() for i in range(len(weight))]
    pairwise = tuple(
        tuple(0.0 if i == j else min(prefix * d, cap, per_logit[i] + per_logit[j]) for j, d in enumerate(row))
        for i, row in enumerate(rows)
    )
    return LipschitzUpperBound(whole_map, per_logit, bounds, prefix=prefix, pairwise=pairwise if len(weight) > 1 else None)


@torch.no_grad()
def graph_lipschitz_upper_bound(model: nn.Module, input_shape: tuple[int, ...]) -> LipschitzUpperBound:
    """Strict L2 bounds of ``model`` (fx-traceable) on inputs of ``input_shape`` (no batch dim); ``ValueError`` for
    non-finite weights, BatchNorm in training mode and anything without a sound rule. ``layers`` lists every
    input-dependent node with its bound (of the map from the input to that node, not a per-layer factor) and rule."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise ValueError(f"{_PREFIX}: BatchNorm {name!r} is in training mode (batch statistics); call model.eval()")
    plain = export(standardize_onnx(model, tuple(input_shape)))  # onnx2torch's modules as plain torch calls
    check_finite(plain, _PREFIX)
    g = _trace(plain, tuple(input_shape))
    bounds = []
    for node in g.module.graph.nodes:
        # Shape queries and unused indexing results (a sort's unused indices) are not functions of the input's values.
        query = node.target in _QUERIES if node.op == "call_method" else node.target is getattr and node.args[1] in _QUERIES
        unused = node.target in (operator.getitem, getattr) and not node.users
        dependent = node.op == "placeholder" or any(map(g.tracked, node.all_input_nodes))
        if dependent and node.op != "output" and not (query or unused):
            g.bounds[node], method = _node_bound(g, node)
            source = next((arg for arg in node.all_input_nodes if g.tracked(arg)), node)
            kind = "input" if node.op == "placeholder" else _describe(g, node)
            name = node.target if node.op == "call_module" else node.name  # a module's qualified name, as in bounds.py
            bounds.append(LayerBound(name, kind, g.shape(source), g.bounds[node], method))
    return _result(g, list(g.module.graph.nodes)[-1], tuple(bounds))  # fx graphs end with their output node
