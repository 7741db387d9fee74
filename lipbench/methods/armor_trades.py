"""ARMOR_D on top of TRADES (Birrell & Ebrahimi, arXiv 2309.03791): ``armor_kl_trades``
(``TRADES-ARMOR_KL``) and ``armor_alpha_trades`` (``TRADES-ARMOR_α``).

TRADES (Zhang et al., ICML 2019, eq. 5) minimises ``CE(f(x), y) + β·KL(p(x) ‖ p(x̃))``
(``p = softmax f``) with x̃ the adversary's maximiser of the KL term. ARMOR_D generalises the
adversarial term: with per-sample losses ``L_i = KL(p(x_i) ‖ p(x̃_i))``
(:func:`~lipbench.losses_armor.per_sample_trades_kl`; Bernoulli KL of sigmoid probabilities
for single-logit binary models) and OT costs ``c_i = κ‖x_i − x̃_i‖₂^q``,

* inner maximisation: :func:`~lipbench.methods.armor.ot_inner_maximisation` ascends
  ``L_i(x̃)/λ − c(x_i, x̃)`` with ``p(x_i)`` detached, from TRADES's start
  ``x + 0.001·N(0, I)`` (:func:`trades_start`; at ``x̃ = x`` the KL and its gradient vanish);
* outer loss: ``CE(f(x), y).mean() + β·ARMOR(L, c)`` (``β`` = ``trades_beta``, 6 by default,
  TRADES's CIFAR value), ARMOR the KL or α objective of :mod:`lipbench.losses_armor`, with
  the clean logits' graph in both terms (:class:`~lipbench.methods.armor.ArmorLoss`,
  ``base="trades"``).

Near x the KL grows like ``‖x̃ − x‖²`` and the cost like ``‖x̃ − x‖^q``: for ``q < 2`` (1.5
by default) x̃ = x is a local maximiser of the inner objective, so the inner maximisation
only moves where a ``step_size`` step reaches KL/λ above the cost; on an untrained network
(nearly flat logits) few examples move, about half once it has trained an epoch (digits).

``clean_weight`` does not apply (the clean term is TRADES's CE with weight 1): these methods
do not take it, so giving it is refused as an unknown parameter. ``lambda_bisection`` is
refused: x̃ = x is a local maximum of KL/λ − c, so with λ* of the previous batch half the
batches find no adversary and λ* falls to its lower end (measured on digits: λ* alternated
between 1e-3 and ~10); λ is learned.

Differences from the authors' code (``armor_trades_cifar10*.py``): their ARMOR per-sample
loss is TRADES's whole per-sample loss ``CE_i + β·KL_i`` behind a TRADES L∞ PGD attack
(no transport cost in the attack), mixed with a clean CE by ``t = 0.5``; here the ARMOR
objective (with its OT inner maximisation in L2) robustifies the KL term only, as TRADES's
β-weighted regulariser, and the clean CE enters once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from lipbench.losses_armor import per_sample_trades_kl
from lipbench.methods.armor import ArmorLoss, ArmorMethod
from lipbench.methods.base import register_method

__all__ = ["ArmorTradesMethod", "trades_start"]

#: The standard deviation of TRADES's random start around x.
TRADES_START_SCALE = 0.001


def trades_start(x: Tensor, generator: torch.Generator, bounds: tuple[float, float] | None = None) -> Tensor:
    """TRADES's start of the inner maximisation: ``x + 0.001·N(0, I)`` (noise drawn with
    ``generator`` on its device, then moved to x's), clamped to ``bounds``."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    start = x.detach() + TRADES_START_SCALE * noise
    return start.clamp(*bounds) if bounds is not None else start


class ArmorTradesMethod(ArmorMethod):
    """ARMOR_D on TRADES: the KL to the clean prediction as the per-sample loss, TRADES's
    random start, the clean logits (with their graph) handed to :class:`ArmorLoss`."""

    base = "trades"
    reference = {
        "link": "https://arxiv.org/abs/2309.03791",
        "authors": "Birrell, Ebrahimi",
        "venue": "arXiv 2309.03791 (2023, rev. 2025); TRADES: Zhang et al., ICML 2019",
    }
    #: As ARMOR_D's, without clean_weight (TRADES's clean CE has weight 1) and with trades_beta
    #: β > 0, the weight of the robustified KL term (TRADES's CIFAR value 6).
    defaults: ClassVar[Mapping[str, float]] = {
        **{key: value for key, value in ArmorMethod.defaults.items() if key != "clean_weight"},
        "trades_beta": 6.0,
    }

    def _adversary(
        self, model: nn.Module, x: Tensor, y: Tensor, bounds: tuple[float, float] | None, generator: torch.Generator
    ) -> tuple[Callable[[Tensor], Tensor] | None, Tensor | None]:
        """``L(x̃) = KL(p(x) ‖ p(x̃))`` with ``p(x)`` detached, from :func:`trades_start`."""
        with torch.no_grad():
            clean_logits = model(x).float()

        def kl_to_clean(logits: Tensor) -> Tensor:
            return per_sample_trades_kl(clean_logits, logits.float())

        return kl_to_clean, trades_start(x, generator, bounds)

    def _clean(self, model: nn.Module, x: Tensor, y: Tensor, loss: ArmorLoss) -> Tensor | None:
        """The clean logits ``f(x)`` (float32), with their graph (both outer terms use them)."""
        return model(x).float()


@register_method("armor_kl_trades")
class ArmorKLTrades(ArmorTradesMethod):
    paper_name = "TRADES-ARMOR_KL"
    description = (
        "ARMOR_D with the KL divergence on top of TRADES: unconstrained ReLU network, clean cross-entropy plus β times "
        "the ARMOR objective of the per-sample KL(p(x) ‖ p(x̃)), x̃ from the OT-regularised L2 adversary; λ learned."
    )
    divergence = "kl"


@register_method("armor_alpha_trades")
class ArmorAlphaTrades(ArmorTradesMethod):
    paper_name = "TRADES-ARMOR_α"
    description = (
        "ARMOR_D with the α-divergence on top of TRADES: unconstrained ReLU network, clean cross-entropy plus β times "
        "the ARMOR_α objective of the per-sample KL(p(x) ‖ p(x̃)), x̃ from the OT-regularised L2 adversary; λ and ν learned."
    )
    divergence = "alpha"
    #: alpha and nu_init as armor_alpha's.
    defaults: ClassVar[Mapping[str, float]] = {**ArmorTradesMethod.defaults, "alpha": 3.0, "nu_init": -0.35}
