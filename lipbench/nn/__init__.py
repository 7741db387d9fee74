"""1-Lipschitz building blocks, export to plain torch, and Lipschitz bounds.

``functional`` holds the pure functions; ``layers`` the modules (each with an
unconstrained twin); ``export`` turns a constrained model into plain ``nn.Linear`` /
``nn.Conv2d``; ``bounds`` gives strict upper bounds (``conv_bounds`` the exact norms of
strided, grouped and circular convolutions) and ``lower_bound`` empirical ones.
"""

from lipbench.nn import functional
from lipbench.nn.bounds import (
    CertifiedBlock,
    LayerBound,
    LipschitzUpperBound,
    conv2d_operator_norm_bound,
    dense_operator_norm,
    lipschitz_upper_bound,
)
from lipbench.nn.export import check_finite, export, unconstrained_twin
from lipbench.nn.graph_bounds import graph_lipschitz_upper_bound
from lipbench.nn.layers import (
    FullSort,
    GlobalL2NormPool2d,
    GroupSort,
    GroupSort2,
    L2NormPool2d,
    LipschitzConv2d,
    LipschitzLinear,
    RowNormalizedLinear,
)
from lipbench.nn.lower_bound import LipschitzLowerBound, input_jacobian, lipschitz_lower_bound, pair_quotients
from lipbench.nn.parametrizations import ConvOperatorNormalized, RowNormalized, SpectralBjorck

__all__ = [
    "functional",
    "LipschitzLinear",
    "LipschitzConv2d",
    "RowNormalizedLinear",
    "GroupSort",
    "GroupSort2",
    "FullSort",
    "L2NormPool2d",
    "GlobalL2NormPool2d",
    "SpectralBjorck",
    "ConvOperatorNormalized",
    "RowNormalized",
    "export",
    "unconstrained_twin",
    "check_finite",
    "CertifiedBlock",
    "LayerBound",
    "LipschitzUpperBound",
    "lipschitz_upper_bound",
    "graph_lipschitz_upper_bound",
    "conv2d_operator_norm_bound",
    "dense_operator_norm",
    "LipschitzLowerBound",
    "lipschitz_lower_bound",
    "input_jacobian",
    "pair_quotients",
]
