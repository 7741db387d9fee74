"""Network architectures, each realised with a layer kit.

An architecture is a list of abstract blocks (conv, pool, dense, ...). A *kit* turns
each block into modules:

* ``gnp`` (gradient-norm preserving, the paper's hKR / GNP networks): Björck conv +
  GroupSort2, L2-norm pooling, Björck dense + FullSort, per-row normalised output;
* ``lip1`` (1LIP_log): the same Björck weights with ReLU and max pooling;
* ``unconstrained`` (Adv, standard): ``nn.Conv2d`` / ``nn.Linear``, ReLU, max pooling;
* any registered layer family (:mod:`lipbench.nn.families`: ``aol``, ``sll``, ``cpl``, ``aoc``,
  ...): the family's dense / conv layers with GroupSort2 (MaxMin), L2-norm pooling and a per-row
  normalised output, the same for every family (Prach et al., CVPR 2024, compare layers so).
  Residual families (SLL, CPL) keep the width: where a block changes it, an AOL layer (the
  cheapest non-residual 1-Lipschitz layer) does, as the LipConvNet stems do.

Every model is an ``nn.Sequential`` chain, so strict bounds apply to it. Besides the named
architectures, ``lipnet-<width>x<depth>`` is the LipConvNet-style family with a width / depth
knob: dense ``depth`` x ``width`` for vector inputs; for images three stages of ``depth`` 3x3
convs of ``width``, ``2 width``, ``4 width`` channels, each followed by L2-norm pooling.
``lipdense-<width>x<depth>`` is the dense form on any input (images are flattened first).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

import lipbench.nn as lnn
from lipbench.nn.families import LAYER_FAMILIES, LayerFamily, get_family

__all__ = [
    "Conv",
    "Pool",
    "Dense",
    "Architecture",
    "ARCHITECTURES",
    "KITS",
    "build_model",
    "default_architecture",
    "get_architecture",
    "is_architecture",
    "is_kit",
]

KITS: tuple[str, ...] = ("gnp", "lip1", "unconstrained")


@dataclass(frozen=True)
class Conv:
    channels: int
    kernel_size: int = 3
    stride: int = 1


@dataclass(frozen=True)
class Pool:
    size: int = 2


@dataclass(frozen=True)
class Dense:
    features: int


Block = Conv | Pool | Dense


@dataclass(frozen=True)
class Architecture:
    """Blocks before flattening (convs and pools), then dense blocks, then the output layer."""

    name: str
    blocks: tuple[Block, ...]
    source: str


ARCHITECTURES: dict[str, Architecture] = {
    architecture.name: architecture
    for architecture in (
        Architecture(
            "moons_dense",
            (Dense(64), Dense(64), Dense(64)),
            "Two-moons toy network (paper Fig. 1/2); the paper's exact widths are in its appendix, not available "
            "to us: three dense layers of 64.",
        ),
        Architecture(
            "digits_dense",
            (Dense(128), Dense(64)),
            "Dense network for scikit-learn's 8x8 digits (lipbench's embedded quick profile; not in the paper).",
        ),
        Architecture(
            "mnist_cnn",
            (Conv(16), Pool(2), Conv(32), Pool(2), Dense(64)),
            "The paper's MNIST CNN shape: conv 16 -> pool -> conv 32 -> pool -> dense 64 -> 10 (as given in the "
            "lipbench core issue; the appendix with exact hyper-parameters is not available to us).",
        ),
        Architecture(
            "cifar10_cnn",
            (Conv(32), Conv(32), Pool(2), Conv(64), Conv(64), Pool(2), Conv(128), Conv(128), Pool(2), Dense(256)),
            "CIFAR-10 VGG-like CNN in the style of the deel-lip CIFAR examples; the paper's appendix is not "
            "available to us, so widths are our choice.",
        ),
        Architecture(
            "celeba_cnn",
            (Conv(16), Pool(2), Conv(32), Pool(2), Conv(64), Pool(2), Conv(64), Pool(2), Conv(128), Pool(2), Dense(256)),
            "CelebA 128x128 binary CNN: five conv/pool stages then dense 256; the paper's appendix is not "
            "available to us, so widths are our choice.",
        ),
        Architecture(
            "eurosat_cnn",
            (
                Conv(32),
                Conv(32),
                Pool(2),
                Conv(64),
                Conv(64),
                Pool(2),
                Conv(128),
                Conv(128),
                Pool(2),
                Conv(128),
                Pool(2),
                Dense(256),
            ),
            "EuroSAT 64x64x3 CNN (not in the paper): the CIFAR-10 VGG-like CNN with a fourth conv/pool stage for "
            "the twice larger side (64 -> 4x4x128 before dense 256); widths are our choice.",
        ),
    )
}

_DEFAULT_ARCHITECTURES = {
    "moons": "moons_dense",
    "digits": "digits_dense",
    "mnist": "mnist_cnn",
    "fashion_mnist": "mnist_cnn",
    "cifar10": "cifar10_cnn",
    "cifar100": "cifar10_cnn",
    "celeba_eyeglasses": "celeba_cnn",
    "eurosat": "eurosat_cnn",
}


_LIPNET = re.compile(r"^lip(net|dense)-([1-9][0-9]{0,3})x([1-9][0-9]?)$")


def is_architecture(name: str) -> bool:
    """True for a named architecture or a well-formed ``lipnet-`` / ``lipdense-<width>x<depth>``."""
    return name in ARCHITECTURES or _LIPNET.match(name) is not None


def get_architecture(name: str, input_shape: Sequence[int]) -> Architecture:
    """The architecture ``name`` for inputs of ``input_shape``; unknown names list the known ones."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    match = _LIPNET.match(name)
    if match is None:
        raise ValueError(
            f"unknown architecture {name!r}; known architectures: {', '.join(sorted(ARCHITECTURES))}, "
            "or lipnet-<width>x<depth> / lipdense-<width>x<depth> (e.g. lipnet-64x4)"
        )
    width, depth = int(match.group(2)), int(match.group(3))
    if len(input_shape) == 1 or match.group(1) == "dense":
        blocks: tuple[Block, ...] = (Dense(width),) * depth
    else:
        blocks = tuple(block for stage in range(3) for block in (*(Conv(width << stage),) * depth, Pool(2)))
    source = f"LipConvNet-style (Prach et al., CVPR 2024): width {width}, depth {depth}, the same for every layer family."
    return Architecture(name, blocks, source)


def default_architecture(dataset: str, input_shape: Sequence[int]) -> str:
    """The architecture a dataset uses unless its recipe names another one."""
    if dataset in _DEFAULT_ARCHITECTURES:
        return _DEFAULT_ARCHITECTURES[dataset]
    return "mnist_cnn" if len(input_shape) == 3 else "moons_dense"


@dataclass(frozen=True)
class _Kit:
    conv: Callable[[int, int, int, int, str, tuple[int, int]], list[nn.Module]]
    pool: Callable[[int], nn.Module]
    dense: Callable[[int, int], list[nn.Module]]
    output: Callable[[int, int], nn.Module]


def _lipschitz_conv(correction: str) -> Callable[[int, int, int, int, str, tuple[int, int]], list[nn.Module]]:
    def conv(
        in_channels: int, out_channels: int, kernel: int, stride: int, activation: str, size: tuple[int, int]
    ) -> list[nn.Module]:
        padding = "same" if stride == 1 else kernel // 2
        layer = lnn.LipschitzConv2d(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            correction=correction,
            input_size=size if correction in ("lambda", "exact") else None,
        )
        return [layer, lnn.GroupSort2() if activation == "groupsort" else nn.ReLU()]

    return conv


def is_kit(kit: str) -> bool:
    """True for a built-in kit or a registered layer family."""
    return kit in KITS or kit in LAYER_FAMILIES


def _family_layer(family: LayerFamily, build: Callable[[LayerFamily], nn.Module], same_width: bool) -> list[nn.Module]:
    """One family layer; a residual family keeps the width, so an AOL layer changes it."""
    if family.residual:
        return [build(family)] if same_width else [build(get_family("aol")), lnn.GroupSort2()]
    return [build(family), lnn.GroupSort2()]


def _family_kit(family: LayerFamily) -> _Kit:
    def conv(i: int, o: int, kernel: int, stride: int, _: str, size: tuple[int, int]) -> list[nn.Module]:
        if family.conv is None:
            raise ValueError(f"layer family {family.name!r} has no convolution; use a dense architecture")
        return _family_layer(family, lambda chosen: chosen.conv(i, o, kernel, stride, size), i == o and stride == 1)

    return _Kit(
        conv=conv,
        pool=lambda size: lnn.L2NormPool2d(size),
        dense=lambda i, o: _family_layer(family, lambda chosen: chosen.dense(i, o), i == o),
        output=lambda i, o: lnn.RowNormalizedLinear(i, o),
    )


def _kit(kit: str, correction: str) -> _Kit:
    if kit in LAYER_FAMILIES:
        return _family_kit(get_family(kit))
    if kit == "gnp":
        return _Kit(
            conv=_lipschitz_conv(correction),
            pool=lambda size: lnn.L2NormPool2d(size),
            dense=lambda i, o: [lnn.LipschitzLinear(i, o), lnn.FullSort()],
            output=lambda i, o: lnn.RowNormalizedLinear(i, o),
        )
    if kit == "lip1":
        return _Kit(
            conv=_lipschitz_conv(correction),
            pool=lambda size: nn.MaxPool2d(size),
            dense=lambda i, o: [lnn.LipschitzLinear(i, o), nn.ReLU()],
            output=lambda i, o: lnn.RowNormalizedLinear(i, o),
        )
    if kit == "unconstrained":
        return _Kit(
            conv=lambda i, o, k, s, _, __: [nn.Conv2d(i, o, k, s, "same" if s == 1 else k // 2), nn.ReLU()],
            pool=lambda size: nn.MaxPool2d(size),
            dense=lambda i, o: [nn.Linear(i, o), nn.ReLU()],
            output=lambda i, o: nn.Linear(i, o),
        )
    raise ValueError(
        f"unknown layer kit {kit!r}; known kits: {', '.join(KITS)}, or a layer family: {', '.join(LAYER_FAMILIES.names())}"
    )


def build_model(
    architecture: str,
    kit: str,
    input_shape: Sequence[int],
    num_classes: int,
    correction: str = "strict",
) -> nn.Sequential:
    """Build ``architecture`` with ``kit`` for inputs of ``input_shape`` (no batch dim).

    Binary problems (``num_classes == 2``) get a single output logit (class 1 where f > 0).
    ``correction`` is the Björck convs' ``strict``, ``lambda`` (eq. 11) or ``exact``
    correction (:class:`lipbench.nn.LipschitzConv2d`); the last two get each conv's input size.
    """
    spec = get_architecture(architecture, input_shape)
    layers = _kit(kit, correction)
    modules: list[nn.Module] = []
    shape = list(input_shape)
    flattened = len(shape) == 1
    activation = "groupsort" if kit == "gnp" else "relu"
    for block in spec.blocks:
        if isinstance(block, Conv):
            if flattened:
                raise ValueError(f"architecture {architecture!r} has a conv block but inputs of shape {tuple(input_shape)}")
            modules += layers.conv(shape[0], block.channels, block.kernel_size, block.stride, activation, (shape[1], shape[2]))
            shape = [block.channels, -(-shape[1] // block.stride), -(-shape[2] // block.stride)]
        elif isinstance(block, Pool):
            modules.append(layers.pool(block.size))
            shape = [shape[0], shape[1] // block.size, shape[2] // block.size]
            if min(shape[1:]) < 1:
                raise ValueError(f"architecture {architecture!r} pools inputs of shape {tuple(input_shape)} to nothing")
        else:
            if not flattened:
                modules.append(nn.Flatten())
                shape, flattened = [shape[0] * shape[1] * shape[2]], True
            modules += layers.dense(shape[0], block.features)
            shape = [block.features]
    if not flattened:
        modules.append(nn.Flatten())
        shape = [shape[0] * shape[1] * shape[2]]
    outputs = 1 if num_classes == 2 else num_classes
    modules.append(layers.output(shape[0], outputs))
    return nn.Sequential(*modules)
