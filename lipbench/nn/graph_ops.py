"""Models converted from ONNX by ``onnx2torch``, made boundable by :mod:`lipbench.nn.graph_bounds`.

:func:`standardize_onnx` rewrites onnx2torch's own modules (OnnxGemm, OnnxBinaryMathOperation, OnnxReshape, ...)
into the plain torch calls whose rules graph_bounds has: shape computations (Shape, Gather, Cast, Concat of
sizes...) are folded into constants when they do not change with the batch size (a reshape's batch entry becomes
-1), the pair (ReduceMin, ReduceMax) concatenated along the reduced axis of size 2 becomes a sort (GroupSort2), and
the result must reproduce the converted model. Any other onnx2torch module is refused naming the ONNX node.
This module also holds the extra rules graph_bounds applies (amax / amin, maximum / minimum).
"""

from __future__ import annotations

import copy
import math
import operator
import re
from typing import Any

import torch
from torch import Tensor, nn
from torch.fx import Graph, GraphModule, Interpreter, Node

__all__ = ["Refused", "GRAPH_OP_RULES", "OPS_SUPPORTED", "OnnxGraphModule", "standardize_onnx"]

OPS_SUPPORTED = (
    "amax / amin (ReduceMax / ReduceMin), maximum / minimum (Max / Min of two tensors); from ONNX (onnx2torch): "
    "Gemm, MatMul / Conv / BatchNormalization / Relu / LeakyRelu / Sigmoid / MaxPool / AveragePool / "
    "GlobalAveragePool / Flatten (as torch modules), Add / Sub / Mul / Div, Abs / Tanh / Neg, Reshape, Concat, "
    "Unsqueeze / Squeeze, Transpose, TopK (all values: a sort), Identity, Cast (same dtype), "
    "shape computations (Shape, Gather, Cast)"
)


class Refused(Exception):
    """No sound rule for a node: the reason, or ``None`` for an operator without any rule."""


def _reduce_extreme(g: Any, node: Node) -> tuple[float, str]:
    """``|max_i a_i - max_i b_i| <= max_i |a_i - b_i|``: each disjoint group's output moves at most its norm."""
    x, dims = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if not g.tracked(x) or len(node.args) > 3 or set(node.kwargs) - {"dim", "keepdim"} or dims is None:
        raise Refused("expects (input, dim, keepdim) with an input-dependent input and explicit dims")
    ndim = g.tensor(x).ndim
    if 0 in [d % ndim for d in ([dims] if isinstance(dims, int) else dims)]:
        raise Refused("it acts on the batch dim (dim 0); lipbench bounds the map of one sample")
    return g.bound(x), "1 (max / min of disjoint groups)"


def _pair_extreme(g: Any, node: Node) -> tuple[float, str]:
    """``max(a, b)`` entrywise moves at most ``max(|da|, |db|)``: ``sqrt(La^2 + Lb^2)``; a constant: ``La``."""
    if len(node.args) != 2 or node.kwargs:
        raise Refused("expects (input, other)")
    x, y = node.args
    if any(g.tracked(t) and g.shape(t) != g.shape(node) for t in (x, y)):
        raise Refused("broadcasting an input-dependent operand repeats it; reshape it explicitly")
    return math.sqrt(g.bound(x) ** 2 + g.bound(y) ** 2), "sqrt(La^2 + Lb^2) (entrywise max / min)"


GRAPH_OP_RULES = dict.fromkeys((torch.amax, torch.amin), _reduce_extreme) | dict.fromkeys(
    (torch.maximum, torch.minimum), _pair_extreme
)


class OnnxGraphModule(GraphModule):
    """A standardized converted model; ``export`` copies it whole (fx graph modules cannot be rebuilt piecewise)."""

    def __deepcopy__(self, memo: dict) -> OnnxGraphModule:
        clone = super().__deepcopy__(memo)  # a plain GraphModule: keep the class
        return OnnxGraphModule(clone, clone.graph)

    def export_plain(self) -> nn.Module:
        clone = copy.deepcopy(self).eval()
        for parameter in clone.parameters():
            parameter.requires_grad_(False)
        return clone


def _is_onnx2torch(module: nn.Module) -> bool:
    return type(module).__module__.startswith("onnx2torch.")


def _from_onnx2torch(model: GraphModule) -> bool:
    """onnx2torch's graphs: module calls only (and indexing of their results), modules named after ONNX nodes."""
    shape = all(
        node.op != "call_method" and (node.op != "call_function" or node.target is operator.getitem) for node in model.graph.nodes
    )
    return bool(model._modules) and shape and not any(node.op == "get_attr" for node in model.graph.nodes)


def _values(model: GraphModule, input_shape: tuple[int, ...], batch: int) -> dict[Node, Any]:
    interpreter = Interpreter(model, garbage_collect_values=False)
    generator = torch.Generator().manual_seed(batch)
    try:
        interpreter.run(torch.rand(batch, *input_shape, generator=generator))
    except Exception as error:
        raise ValueError(f"the converted ONNX model cannot run on (batch {batch}, *{input_shape}) inputs: {error}") from error
    return interpreter.env


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    return type(a) is type(b) and a == b


class _Rewriter:
    """Copies the converted graph node by node into plain torch calls (the module docstring's rules)."""

    def __init__(self, model: GraphModule, input_shape: tuple[int, ...]) -> None:
        self.model, self.graph, self.root = model, Graph(), nn.Module()
        self.runs = [_values(model, input_shape, batch) for batch in (1, 2, 3)]
        self.dependent: set[Node] = set()
        for node in model.graph.nodes:
            module = model.get_submodule(node.target) if node.op == "call_module" else None
            shape_only = module is not None and type(module).__name__ == "OnnxShape"
            if node.op == "placeholder" or (not shape_only and any(n in self.dependent for n in node.all_input_nodes)):
                self.dependent.add(node)
        self.new: dict[Node, Any] = {}

    def constant(self, node: Node, batch_entry: bool = False) -> Any:
        """A node's value when it does not change with the batch size; with ``batch_entry`` a shape whose first
        entry is the batch size becomes -1 there."""
        first, *others = (run[node] for run in self.runs)
        if all(_same(first, other) for other in others):
            return first
        if batch_entry and all(isinstance(v, Tensor) and v.ndim == 1 and len(v) for v in (first, *others)):
            if [int(v[0]) for v in (first, *others)] == [1, 2, 3] and all(_same(first[1:], v[1:]) for v in others):
                return torch.cat([torch.tensor([-1]), first[1:]])
        raise Refused(f"{node.name} is computed from the batch size (not only a reshape's batch entry)")

    def arg(self, node: Any) -> Any:
        """The new graph's version of an argument: a rewritten node, or a constant as a buffer."""
        if not isinstance(node, Node):
            return node
        if node in self.dependent:
            return self.new[node]
        value = self.constant(node)
        if not isinstance(value, Tensor):
            return value
        name = f"const_{_safe(node.name)}"
        if not hasattr(self.root, name):
            self.root.register_buffer(name, value.clone())
        return self.graph.get_attr(name)

    def call(self, node: Node, target: Any, *args: Any, **kwargs: Any) -> Node:
        return self.graph.create_node("call_function", target, args, kwargs, name=_safe(node.name))


def _safe(name: str) -> str:
    return re.sub(r"\W", "_", name).strip("_") or "node"


def _gemm(r: _Rewriter, node: Node, module: nn.Module) -> Node:
    a, b, *c = node.args
    if module.trans_a or not (a in r.dependent and b not in r.dependent and all(t not in r.dependent for t in c)):
        raise Refused("Gemm needs A the input-dependent operand (not transposed), B and C constant")
    weight = r.constant(b).T if not module.trans_b else r.constant(b)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bool(c))
    linear.weight.data = (weight * module.alpha).float().clone()
    if c:
        linear.bias.data = (r.constant(c[0]) * module.beta).float().expand(weight.shape[0]).clone()
    name = _safe(node.target)
    r.root.add_module(name, linear)
    return r.graph.call_module(name, (r.arg(a),))


def _sort_pair(r: _Rewriter, node: Node, axis: int) -> Node | None:
    """``Concat(ReduceMin(h, a), ReduceMax(h, a), axis=a)`` with ``h`` of size 2 on ``a``: a sort (GroupSort2)."""
    reduces = [r.model.get_submodule(n.target) if isinstance(n, Node) and n.op == "call_module" else None for n in node.args]
    if len(node.args) != 2 or not all(type(m).__name__ == "OnnxReduceStaticAxes" for m in reduces):
        return None
    kinds, sources = [m.operation_type for m in reduces], {n.args[0] for n in node.args}
    (h,) = sources if len(sources) == 1 else (None,)
    if h is None or sorted(kinds) != ["ReduceMax", "ReduceMin"] or not all(m.keepdims for m in reduces):
        return None
    ndim = r.runs[0][h].ndim
    if any([a % ndim for a in m.axes] != [axis % ndim] for m in reduces) or r.runs[0][h].shape[axis] != 2:
        return None
    result = r.call(node, torch.sort, r.arg(h), dim=axis, descending=kinds[0] == "ReduceMax")
    return r.graph.call_function(getattr, (result, "values"))


def _rewrite(r: _Rewriter, node: Node, module: nn.Module) -> Any:
    """The plain torch version of one input-dependent onnx2torch module call."""
    kind, args = type(module).__name__, node.args
    x = r.arg(args[0]) if args else None
    if kind == "OnnxBinaryMathOperation" and module.broadcast in (None, 0):
        ops = {torch.add: torch.add, torch.sub: torch.sub, torch.mul: torch.mul}
        return r.call(node, ops.get(module.math_op_function, torch.div), x, r.arg(args[1]))
    if kind == "OnnxFunction" and module.function in (torch.abs, torch.tanh, torch.neg):
        return r.call(node, module.function, x)
    if kind == "OnnxNeg":
        return r.call(node, torch.neg, x)
    if kind == "OnnxReshape":
        return r.call(node, torch.reshape, x, tuple(int(v) for v in r.constant(args[1], batch_entry=True)))
    if kind == "OnnxConcat":
        return _sort_pair(r, node, module.axis) or r.call(node, torch.cat, [r.arg(a) for a in args], dim=module.axis)
    if kind == "OnnxReduceStaticAxes" and module.operation_type in ("ReduceMax", "ReduceMin") and module.axes:
        target = torch.amax if module.operation_type == "ReduceMax" else torch.amin
        return r.call(node, target, x, dim=tuple(module.axes), keepdim=module.keepdims)
    if kind == "OnnxMinMax" and len(args) == 2:
        return r.call(node, torch.maximum if module._operator is torch.amax else torch.minimum, x, r.arg(args[1]))
    if kind == "OnnxUnsqueezeStaticAxes":
        for axis in module._axes:
            x = r.graph.call_function(torch.unsqueeze, (x, axis))
        return x
    if kind in ("OnnxSqueezeStaticAxes", "OnnxSqueezeDynamicAxes"):
        axes = module.axes if kind == "OnnxSqueezeStaticAxes" else [int(a) for a in r.constant(args[1]).flatten()]
        return r.call(node, torch.squeeze, x, tuple(axes)) if axes else _refuse("Squeeze needs explicit axes")
    if kind == "OnnxTranspose" and module.perm:
        return r.call(node, torch.permute, x, tuple(module.perm))
    if kind == "OnnxTopK" and module.sorted and int(r.constant(args[1]).flatten()[0]) == r.runs[0][args[0]].shape[module.dim]:
        result = r.call(node, torch.sort, x, dim=module.dim, descending=module.largest)
        if all(user.op == "call_function" and user.target is operator.getitem for user in node.users):
            return result
        return r.graph.call_function(getattr, (result, "values"))  # used whole: onnx2torch's graph output (values)
    if kind in ("OnnxGlobalAveragePool", "OnnxGlobalAveragePoolWithKnownInputShape"):
        return r.call(node, nn.functional.adaptive_avg_pool2d, x, 1)
    if kind == "OnnxCopyIdentity" or (kind == "OnnxCast" and module.torch_dtype == r.runs[0][args[0]].dtype):
        return x
    if kind == "OnnxMatMul":  # graph_bounds refuses a product of two input-dependent tensors (a dynamic weight)
        return r.call(node, torch.matmul, x, r.arg(args[1]))
    if kind == "OnnxGemm":
        return _gemm(r, node, module)
    raise Refused(None)


def _refuse(reason: str) -> Any:
    raise Refused(reason)


def _copy_node(r: _Rewriter, node: Node) -> None:
    if node.op == "placeholder":
        r.new[node] = r.graph.placeholder(_safe(node.name))
    elif node.op == "output":
        r.graph.output(r.arg(node.args[0]))
    elif node.op == "call_module":
        module = r.model.get_submodule(node.target)
        if _is_onnx2torch(module):
            r.new[node] = _rewrite(r, node, module)
        elif type(module).__module__.startswith("torch.nn.") and not node.kwargs:
            name = _safe(node.target)
            r.root.add_module(name, copy.deepcopy(module))
            r.new[node] = r.graph.call_module(name, tuple(r.arg(a) for a in node.args))
        else:
            raise Refused(None)
    elif node.op == "call_function" and node.target is operator.getitem and node.args[0] in r.dependent:
        source = r.new[node.args[0]]
        r.new[node] = r.graph.call_function(node.target, (source, node.args[1]))
    else:
        raise Refused(None)


def standardize_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """``model`` unchanged unless it is an onnx2torch graph; then its plain-torch :class:`OnnxGraphModule`.
    ``ValueError`` naming the ONNX node and operator for anything without a rewrite."""
    if not isinstance(model, GraphModule) or isinstance(model, OnnxGraphModule) or not _from_onnx2torch(model):
        return model
    r = _Rewriter(model.eval(), tuple(input_shape))
    for node in model.graph.nodes:
        if node.op in ("placeholder", "output") or node in r.dependent:
            try:
                _copy_node(r, node)
            except Refused as refusal:
                kind = type(model.get_submodule(node.target)).__name__ if node.op == "call_module" else node.op
                reason = refusal.args[0] or f"is not supported; supported: {OPS_SUPPORTED}"
                raise ValueError(f"ONNX node {node.target!r} ({kind}) {reason}") from None
    result = OnnxGraphModule(r.root, r.graph).eval()
    result.graph.eliminate_dead_code()  # a sorted pair's ReduceMin / ReduceMax
    result.recompile()
    x = torch.rand(3, *input_shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)
        expected = expected if isinstance(expected, Tensor) else expected[0]  # a TopK output: its values
        if not torch.allclose(result(x), expected, rtol=1e-5, atol=1e-6):
            raise ValueError("the standardized ONNX graph does not reproduce the converted model")
    return result
