"""Layer families as methods: two per family, the LipNet width/depth knob, per-model architecture."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

import lipbench.nn as lnn
from lipbench.losses import cross_entropy_loss
from lipbench.methods import build_model, get_architecture, get_method
from lipbench.methods.architectures import Conv, Dense, Pool
from lipbench.nn.families import get_family, list_families
from lipbench.train.config import resolve_train_config

pytestmark = pytest.mark.usefixtures("one_thread")

_RECIPE = {"epochs": 1, "batch_size": 8, "learning_rate": 0.01}


@pytest.mark.parametrize("family", list_families())
def test_every_family_is_two_methods_on_its_own_layers(family):
    for suffix, loss in (("hkr", "hkr"), ("ce", "cross_entropy")):
        method = get_method(f"{family}_{suffix}")
        assert method.kit == family and method.loss == loss and method.constrained
        assert method.describe()["kit"] == family


@pytest.mark.parametrize("family", list_families())
@pytest.mark.parametrize(
    ("input_shape", "architecture"), [((64,), "lipnet-16x2"), ((1, 16, 16), "lipnet-4x1"), ((1, 8, 8), "lipdense-16x2")]
)
def test_family_networks_are_certified_1_lipschitz_per_logit(family, input_shape, architecture):
    if len(input_shape) == 3 and get_family(family).conv is None:
        with pytest.raises(ValueError, match="has no convolution"):
            get_method(f"{family}_hkr").build_model(input_shape, 10, architecture)
        return
    torch.manual_seed(0)
    model = get_method(f"{family}_hkr").build_model(input_shape, 10, architecture)
    bound = lnn.lipschitz_upper_bound(model, input_shape)
    assert max(bound.per_logit) <= 1 + 1e-4
    assert bound.whole_map <= math.sqrt(2) * (1 + 1e-4)  # per-row normalised output: <= sqrt(rows) in general
    x = torch.rand(3, *input_shape)
    model.eval()
    assert torch.allclose(lnn.export(model)(x), model(x), atol=1e-5)


def test_residual_families_change_the_width_with_an_aol_layer():
    residual = [name for name in list_families() if get_family(name).residual]
    if not residual:
        pytest.skip("no residual family registered")
    model = build_model("lipnet-16x3", residual[0], (64,), 10)
    names = [type(module).__name__ for module in model]
    aol = next(type(module).__name__ for module in build_model("lipnet-16x1", "aol", (64,), 10))
    assert names.count(aol) == 1  # 64 -> 16 only; the other two blocks keep the width
    assert sum(name == names[2] for name in names) == 2


def test_lipnet_knob_shapes_and_unknown_names():
    assert get_architecture("lipnet-32x2", (64,)).blocks == (Dense(32), Dense(32))
    assert get_architecture("lipdense-32x2", (1, 8, 8)).blocks == (Dense(32), Dense(32))
    blocks = get_architecture("lipnet-8x2", (1, 28, 28)).blocks
    assert blocks == (Conv(8), Conv(8), Pool(2), Conv(16), Conv(16), Pool(2), Conv(32), Conv(32), Pool(2))
    for bad in ("lipnet-0x2", "lipnet-8", "resnet", "lipnet-8x100", "lipconv-8x2"):
        with pytest.raises(ValueError, match="unknown architecture .*lipnet-<width>x<depth>"):
            get_architecture(bad, (64,))


def test_a_model_variant_may_name_its_own_architecture():
    config = resolve_train_config("digits", "aol_hkr", {"architecture": "lipnet-16x2"}, _RECIPE, 0, (1, 8, 8), 10)
    assert config.method == "aol_hkr" and config.architecture == "lipnet-16x2"
    assert "architecture" not in config.method_params
    default = resolve_train_config("digits", "aol_hkr", {}, _RECIPE, 0, (1, 8, 8), 10)
    assert default.architecture == "digits_dense" and default.fingerprint() != config.fingerprint()
    with pytest.raises(ValueError, match=r"train\.digits\.aol_hkr: unknown architecture 'lipnet-x'"):
        resolve_train_config("digits", "aol_hkr", {"architecture": "lipnet-x"}, _RECIPE, 0, (1, 8, 8), 10)


def test_offset_cross_entropy_is_prachs_lip_cross_entropy():
    logits = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.4, -0.1]])
    labels = torch.tensor([0, 1])
    # Prach et al.'s LipCrossEntropyLoss(margin=0.4, temperature=0.25): CE((f - 0.4 onehot) / 0.25)
    expected = F.cross_entropy((logits - 0.4 * F.one_hot(labels, 3)) / 0.25, labels)
    assert torch.allclose(cross_entropy_loss(logits, labels, temperature=4.0, offset=0.4), expected)
    assert torch.equal(cross_entropy_loss(logits, labels, temperature=4.0), F.cross_entropy(4.0 * logits, labels))
    scores, targets = torch.tensor([0.2, -0.1]), torch.tensor([1, 0])
    shifted = torch.tensor([0.2 - 0.4, -0.1 + 0.4])
    binary = F.binary_cross_entropy_with_logits(4.0 * shifted, targets.float())
    assert torch.allclose(cross_entropy_loss(scores, targets, temperature=4.0, offset=0.4), binary)
    assert dict(get_method("aol_ce").defaults) == {"temperature": 4.0, "offset": 0.4}
