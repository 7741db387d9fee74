"""``hkr_ce``: hKR plus a cross-entropy term, a new method compared on lipbench's protocol.

The loss is ``hKR_λ^m(f) + w · CE(τ f)`` on the same gradient-norm-preserving network as
``hkr``: the hinge-regularised KR term keeps the transport interpretation, the
cross-entropy term sharpens the decision. It is registered under the name ``hkr_ce`` by
importing this module; the package declares it under the ``lipbench.methods`` entry-point
group, so lipbench finds it without any change to lipbench itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from lipbench.losses import Reduce, make_loss
from lipbench.methods import Method, register_method


@register_method("hkr_ce")
class HKRWithCrossEntropy(Method):
    paper_name = "hKR+CE (example)"
    description = "Example plug-in: hKR loss plus a weighted cross-entropy term on the GNP network."
    kit = "gnp"
    loss = "hkr"
    defaults = {"alpha": 50.0, "margin": 0.3, "ce_weight": 0.5, "temperature": 10.0}
    reference = {"link": "https://example.org/lipbench-example-method", "authors": "lipbench example", "venue": "example"}

    def loss_function(
        self, binary: bool, params: Mapping[str, Any], reduce: Reduce | None = None
    ) -> Callable[[Tensor, Tensor], Tensor]:
        # reduce (data-parallel training under torchrun) is handed on to every term, so the
        # ranks' losses add up to the loss of the whole batch (see lipbench.losses).
        hkr = make_loss("hkr", binary=binary, reduce=reduce, alpha=params["alpha"], margin=params["margin"])
        cross_entropy = make_loss("cross_entropy", binary=binary, reduce=reduce, temperature=params["temperature"])
        weight = float(params["ce_weight"])

        def loss(outputs: Tensor, labels: Tensor) -> Tensor:
            return hkr(outputs, labels) + weight * cross_entropy(outputs, labels)

        return loss
