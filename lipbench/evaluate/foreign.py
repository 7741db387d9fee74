"""Load and check a model built elsewhere: an ONNX file and its model card (:mod:`lipbench.evaluate.model_card`).

Everything is checked before any expensive work, and each refusal names the problem and the fix: pickles
(``.pt`` / ``.pth`` / ``.pkl`` ..., refused by name and content, never unpickled), ONNX files with external
data, operators outside :data:`ONNX_OPERATORS` (node and operator named), non-finite weights, an input shape,
class count, class order or input range that contradicts the card or the dataset. The ONNX graph is converted by
``onnx2torch`` and rewritten into plain torch calls (:func:`lipbench.nn.graph_ops.standardize_onnx`); the card's
normalisation ``(x - mean) / std`` becomes the model's first affine map (its factor ``1 / min(std)`` is in the
bound), so inputs and certificates are in the dataset's prepared input space. The strict bound is
:func:`lipbench.nn.graph_lipschitz_upper_bound`'s; a dynamic weight (a product of input-dependent tensors) has
none and is refused there.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.fx import GraphModule

from lipbench.data import DatasetInfo
from lipbench.data.base import sha256_file
from lipbench.evaluate.model_card import ModelCard
from lipbench.nn import LipschitzUpperBound, graph_lipschitz_upper_bound, lipschitz_upper_bound
from lipbench.nn.graph_ops import OnnxGraphModule, standardize_onnx

__all__ = ["ONNX_OPERATORS", "ForeignModel", "GraphBody", "Normalize", "assemble", "check_card", "load_foreign"]

#: ONNX operators (default domain) a foreign model may use; anything else is refused before conversion.
ONNX_OPERATORS = frozenset(
    "Gemm MatMul Conv BatchNormalization Relu LeakyRelu Sigmoid Tanh Abs Neg MaxPool AveragePool GlobalAveragePool "
    "Flatten Add Sub Mul Div Reshape Concat Unsqueeze Squeeze Transpose TopK Identity Shape Gather Cast Constant "
    "ReduceMax ReduceMin Max Min".split()
)
_PICKLES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar", ".zip", ".joblib", ".npy", ".npz")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel: the card's normalisation, folded into the model."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], rank: int) -> None:
        super().__init__()
        shape = (len(mean),) + (1,) * (rank - 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.div(torch.sub(x, self.mean), self.std)


class GraphBody(nn.Module):
    """A general graph as one link of a chain: it certifies its own bound with ``graph_lipschitz_upper_bound``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def lipschitz_bound(self, input_shape: tuple[int, ...]) -> tuple[float, str]:
        upper = graph_lipschitz_upper_bound(self.net, tuple(input_shape))
        return upper.whole_map, f"graph bound over {len(upper.layers)} nodes (lipbench.nn.graph_bounds)"

    def export_plain(self) -> nn.Module:
        return copy.deepcopy(self).eval()


@dataclass(frozen=True)
class ForeignModel:
    """The evaluated model (``[body, head]`` chain), its strict bound from the whole graph, the file's sha256
    and where the model came from (``source``: "ONNX model (opset 17)", "plug-in architecture NAME", ...)."""

    model: nn.Module
    upper: LipschitzUpperBound
    sha256: str
    source: str
    parameter_count: int


def _refuse_pickles(path: Path) -> None:
    head = path.open("rb").read(4)
    if path.suffix.lower() in _PICKLES or head[:1] == b"\x80" or head[:2] == b"PK":
        raise ValueError(
            f"{path}: a pickle / torch.save file is refused (lipbench never unpickles: it can run code). "
            "Export the model to ONNX (torch.onnx.export(model, x, 'model.onnx', opset_version=17, dynamo=False))"
        )
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"{path}: give an ONNX file (.onnx); for lipbench's own architectures use --weights and --variant")


def _tensors(proto) -> list:
    """Every tensor stored in the graph: initializers and Constant nodes' attributes."""
    tensors = list(proto.graph.initializer)
    for node in proto.graph.node:
        tensors += [attribute.t for attribute in node.attribute if attribute.HasField("t")]
    return tensors


def _check_proto(path: Path, proto) -> None:
    import onnx
    from onnx import numpy_helper

    for tensor in _tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            where = {entry.key: entry.value for entry in tensor.external_data}.get("location", "?")
            raise ValueError(
                f"{path}: tensor {tensor.name!r} keeps its data in an external file ({where!r}); lipbench reads one "
                "self-contained file and no path outside it: save with onnx.save(model, path, save_as_external_data=False)"
            )
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ONNX_OPERATORS:
            raise ValueError(
                f"{path}: ONNX node {node.name!r} uses operator {node.domain + '.' if node.domain else ''}{node.op_type}, "
                f"which has no strict Lipschitz rule; supported: {', '.join(sorted(ONNX_OPERATORS))}"
            )
    for tensor in _tensors(proto):
        values = numpy_helper.to_array(tensor)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ValueError(f"{path}: weight {tensor.name!r} holds NaN or inf values; the model is unusable")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise ValueError(f"{path}: not a valid ONNX model: {str(error).splitlines()[0]}") from None


def _check_io(path: Path, proto, card: ModelCard) -> None:
    names = {tensor.name for tensor in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in names]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise ValueError(
            f"{path}: the model must have one input and one output (logits), has {len(inputs)} and {len(proto.graph.output)}"
        )
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if not dims or dims[0] is not None:
        raise ValueError(
            f"{path}: the input's batch dim is fixed ({dims[:1]}); export with a dynamic batch: "
            "torch.onnx.export(..., input_names=['x'], dynamic_axes={'x': {0: 'batch'}})"
        )
    if tuple(dims[1:]) != card.input_shape:
        raise ValueError(f"{path}: input shape (batch, {dims[1:]}) contradicts the card's input_shape {list(card.input_shape)}")


def check_card(card: ModelCard, info: DatasetInfo, dataset: str) -> None:
    """The card against the dataset: name, input shape and range, class count and order."""
    where = f"model card {card.path}"
    checks = [
        ("dataset", card.dataset == dataset, f"is {card.dataset!r} but you evaluate on {dataset!r}"),
        (
            "input_shape",
            card.input_shape == info.input_shape,
            f"{list(card.input_shape)} != {dataset}'s {list(info.input_shape)}",
        ),
        ("num_classes", card.num_classes == info.num_classes, f"{card.num_classes} != {dataset}'s {info.num_classes} classes"),
        (
            "input_range",
            card.input_range == info.bounds,
            f"{list(card.input_range)} != {dataset}'s input box {list(info.bounds)}",
        ),
        (
            "classes",
            card.classes == tuple(range(info.num_classes)),
            f"must list {dataset}'s labels 0..{info.num_classes - 1} in logit order; reorder the output layer",
        ),
    ]
    for key, ok, problem in checks:
        if not ok:
            raise ValueError(f"{where}: key {key!r}: {problem}")


def _convert(path: Path, proto, card: ModelCard) -> nn.Module:
    import onnx2torch

    try:
        converted = onnx2torch.convert(proto)
    except NotImplementedError as error:
        raise ValueError(
            f"{path}: onnx2torch cannot convert it ({error}); export with opset_version=17 (torch.onnx.export(..., "
            "opset_version=17, dynamo=False))"
        ) from None
    return standardize_onnx(converted.eval(), card.input_shape)


def _split_head(graph: OnnxGraphModule) -> tuple[OnnxGraphModule, nn.Linear | None]:
    """The graph without its last dense layer, and that layer (``None`` when it does not end in one)."""
    body = OnnxGraphModule(graph, copy.deepcopy(graph.graph))
    output = next(node for node in body.graph.nodes if node.op == "output")
    (last,) = output.args
    module = body.get_submodule(last.target) if last.op == "call_module" else None
    if not isinstance(module, nn.Linear) or len(last.users) != 1:
        return graph, None
    output.args = (last.args[0],)
    body.graph.erase_node(last)
    body.recompile()
    body.delete_all_unused_submodules()
    return body, copy.deepcopy(module)


def _build(graph: nn.Module, card: ModelCard) -> tuple[nn.Module, nn.Module]:
    """The whole map (for the graph bound) and the evaluated chain ``[body, head]`` (the same function)."""
    normalize = nn.Identity() if card.mean is None else Normalize(card.mean, card.std, len(card.input_shape))
    whole = nn.Sequential(normalize, graph).eval()
    if isinstance(graph, nn.Sequential) and len(graph) > 1 and isinstance(graph[-1], nn.Linear):
        links = OrderedDict(body=GraphBody(nn.Sequential(copy.deepcopy(normalize), graph[:-1])), head=graph[-1])
        return whole, nn.Sequential(links).eval()
    if not isinstance(graph, GraphModule):
        return whole, nn.Sequential(OrderedDict(body=GraphBody(whole))).eval()
    body, head = _split_head(graph)
    links = OrderedDict(body=GraphBody(nn.Sequential(copy.deepcopy(normalize), body)))
    return whole, nn.Sequential(links | ({"head": head} if head is not None else {})).eval()


def _check_outputs(path: Path, whole: nn.Module, chain: nn.Module, card: ModelCard, info: DatasetInfo) -> None:
    x = torch.rand(4, *card.input_shape, generator=torch.Generator().manual_seed(0))
    x = info.bounds[0] + (info.bounds[1] - info.bounds[0]) * x
    with torch.no_grad():
        logits, again = whole(x), chain(x)
    if logits.ndim != 2 or logits.shape[1] != card.num_classes:
        raise ValueError(f"{path}: outputs {tuple(logits.shape[1:])} logits per input, the card says {card.num_classes} classes")
    if not torch.allclose(logits, again, rtol=1e-5, atol=1e-6):
        raise ValueError(f"{path}: splitting off the last dense layer changed the model's outputs")


def load_foreign(path: Path, card: ModelCard, info: DatasetInfo, dataset: str) -> ForeignModel:
    """Check ``path`` and ``card`` against the dataset, convert, and compute the strict bound (``ValueError``
    naming the problem and the fix)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    _refuse_pickles(path)
    check_card(card, info, dataset)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise ValueError(f"{path}: cannot be read as an ONNX model: {error}") from None
    _check_proto(path, proto)
    _check_io(path, proto, card)
    opset = max((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), default=0)
    return assemble(path, _convert(path, proto, card), card, info, f"ONNX model (opset {opset})")


def assemble(path: Path, graph: nn.Module, card: ModelCard, info: DatasetInfo, source: str) -> ForeignModel:
    """The checked model of ``graph`` (the card's normalisation first) with its strict graph bound."""
    whole, chain = _build(graph, card)
    _check_outputs(path, whole, chain, card, info)
    upper = graph_lipschitz_upper_bound(whole, card.input_shape)
    chained = lipschitz_upper_bound(chain, card.input_shape)
    if not math.isclose(chained.whole_map, upper.whole_map, rel_tol=1e-9):
        raise ValueError(f"{path}: the chain's bound {chained.whole_map} differs from the graph's {upper.whole_map}")
    return ForeignModel(chain, upper, sha256_file(path), source, sum(p.numel() for p in chain.parameters()))
