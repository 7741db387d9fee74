"""Models built elsewhere (ONNX + model card): checks, strict graph bounds, and the end-to-end evaluation."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from torch import nn

from lipbench.cli.main import main
from lipbench.data import load_dataset, prepare_dataset, take_tensors
from lipbench.evaluate import external
from lipbench.evaluate.foreign import load_foreign
from lipbench.evaluate.model_card import ModelCardError, load_model_card
from lipbench.nn import graph_lipschitz_upper_bound, layers, lipschitz_upper_bound
from lipbench.profiles import load_profile
from lipbench.runs import Layout, RunKey

FAST_ATTACKS = {
    "pgd_l2": {"steps": 10, "rel_stepsize": 0.2},
    "cw_l2": {"steps": 30, "binary_search_steps": 3},
    "autoattack_l2": {"version": "custom", "attacks": ["apgd-ce"], "n_iter": 10},
}
SHAPE = (1, 8, 8)


def write_params(folder: Path) -> Path:
    evaluate = {
        "epsilons": [0.1, 0.3],
        "certify_points": 120,
        "attack_points": 40,
        "deepfool_points": 60,
        "attacks": ["fgm", "pgd_l2", "cw_l2", "deepfool_l2", "autoattack_l2"],
        "attack_options": FAST_ATTACKS,
    }
    params = {
        "profile": "tiny",
        "root": ".",
        "params_file": "params.yaml",
        "paths": {key: str(folder / key) for key in ("data", "models", "evaluation", "metrics", "reports")},
        "datasets": ["digits"],
        "models": ["hkr"],
        "seeds": [0],
        "prepare": {"mirror": "", "digits": {"seed": 0, "test_fraction": 0.25}},
        "train": {"device": "cpu", "digits": {"recipe": {"epochs": 1, "batch_size": 64, "learning_rate": 0.005}, "hkr": {}}},
        "evaluate": {
            "device": "cpu",
            "batch_size": 64,
            "workers": 1,
            "verify": {"ascent_steps": 3, "audit_points": 40, "audit_steps": 10, "layer_power_iterations": 10},
            "digits": evaluate,
        },
    }
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def export_onnx(model: nn.Module, path: Path, shape: tuple[int, ...] = SHAPE, opset: int = 17) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), torch.zeros(1, *shape), str(path), dynamo=False, opset_version=opset, input_names=["x"],
            output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    return path


def write_card(path: Path, **changes) -> Path:
    card = {
        "dataset": "digits",
        "input_shape": list(SHAPE),
        "input_range": [0.0, 1.0],
        "normalization": "none",
        "classes": list(range(10)),
        "num_classes": 10,
        "authors": "A. Tester",
        "paper": "https://example.org/paper",
        "architecture": "GroupSort2 MLP (deel-torchlip)",
    } | changes
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def params(tmp_path_factory) -> Path:
    """A tiny digits profile, data prepared (nothing trained: the models come from elsewhere)."""
    path = write_params(tmp_path_factory.mktemp("foreign"))
    profile = load_profile(path)
    prepare_dataset("digits", profile.path_of("data"), profile.prepare_params("digits"))
    return path


def _train(model: nn.Module, params: Path, steps: int = 300) -> nn.Module:
    profile = load_profile(params)
    x, y = take_tensors(load_dataset("digits", profile.path_of("data"), profile.prepare_params("digits")).train)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        index = torch.randint(0, len(x), (64,), generator=generator)
        loss = nn.functional.cross_entropy(10.0 * model(x[index]), y[index])  # temperature: 1-Lipschitz logits
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def torchlip(params, tmp_path_factory) -> tuple[nn.Module, Path]:
    """A trained deel-torchlip GroupSort2 MLP, its vanilla export, as an ONNX file with its card."""
    tl = pytest.importorskip("deel.torchlip")
    torch.manual_seed(0)
    model = tl.Sequential(
        nn.Flatten(), tl.SpectralLinear(64, 64), tl.GroupSort2(), tl.SpectralLinear(64, 32), tl.GroupSort2(),
        tl.FrobeniusLinear(32, 10),
    )  # fmt: skip
    plain = _train(model, params).vanilla_export().eval()
    folder = tmp_path_factory.mktemp("torchlip")
    path = export_onnx(plain, folder / "torchlip.onnx")
    write_card(folder / "torchlip.card.yaml", claimed_clean_accuracy=1.0)
    return plain, path


def _native(plain: nn.Module) -> nn.Sequential:
    """The same network in lipbench's own layers: bounded by lipbench's chain rules."""
    linears = [m for m in plain.modules() if isinstance(m, nn.Linear)]
    native = nn.Sequential(nn.Flatten(), linears[0], layers.GroupSort2(), linears[1], layers.GroupSort2(), linears[2])
    return native.eval()


def _card(path: Path):
    return load_model_card(path.with_name(path.stem + ".card.yaml"))


def _info(params: Path):
    profile = load_profile(params)
    return load_dataset("digits", profile.path_of("data"), profile.prepare_params("digits")).info


def test_a_torchlip_onnx_model_has_the_bound_lipbench_computes_natively(torchlip, params):
    plain, path = torchlip
    foreign = load_foreign(path, _card(path), _info(params), "digits")
    native = lipschitz_upper_bound(_native(plain), SHAPE)
    assert math.isclose(foreign.upper.whole_map, native.whole_map, rel_tol=1e-6)
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(foreign.upper.per_logit, native.per_logit))
    x = torch.rand(5, *SHAPE)
    assert torch.allclose(foreign.model(x), plain(x), atol=1e-5)


def test_a_torchlip_onnx_model_is_evaluated_end_to_end_through_the_cli(torchlip, params, capsys):
    _, path = torchlip
    code = main(["evaluate", "--params", str(params), "--dataset", "digits", "--model", str(path), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    entry = json.loads((load_profile(params).path_of("metrics") / "external" / "digits-torchlip.json").read_text())
    assert entry["verification"]["status"] == "verified" and entry["external"] and entry["model"] == "torchlip"
    assert entry["model_sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert entry["model_card"]["authors"] == "A. Tester" and "prepared input space" in entry["input_space"]
    assert entry["clean_acc"] > 0.5 and entry["reported"] == 1.0 and entry["constrained"]
    layout, key = Layout.of(load_profile(params)), RunKey("digits", "foreign", 0, external="torchlip")
    measured = json.loads(layout.stage_summary("certify", key).read_text())["clean_accuracy"]
    assert bool(entry["flags"]) == (1.0 - measured > external.claim_gap_limit(1.0, 120))  # the card claims 1.0


def test_an_orthogonium_model_has_the_bound_lipbench_computes_natively(tmp_path):
    aoc = pytest.importorskip("orthogonium.layers")
    torch.manual_seed(0)
    conv, linear = aoc.AdaptiveOrthoConv2d(1, 4, 3, stride=2, padding=1), aoc.OrthoLinear(64, 10)
    plain_conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
    plain_linear = nn.Linear(64, 10)
    with torch.no_grad():
        plain_conv.weight.copy_(conv.weight), plain_conv.bias.copy_(conv.bias)
        plain_linear.weight.copy_(linear.weight), plain_linear.bias.copy_(linear.bias)
    plain = nn.Sequential(plain_conv, nn.ReLU(), nn.Flatten(), plain_linear).eval()
    path = export_onnx(plain, tmp_path / "aoc.onnx")
    upper = graph_lipschitz_upper_bound(_converted(path), SHAPE)
    native = lipschitz_upper_bound(plain, SHAPE)
    assert math.isclose(upper.whole_map, native.whole_map, rel_tol=1e-6) and upper.whole_map < 1.01


def _converted(path: Path) -> nn.Module:
    import onnx2torch

    return onnx2torch.convert(onnx.load(str(path))).eval()


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(x + self.conv(x), 1))


def test_a_residual_onnx_model_gets_the_triangle_bound(tmp_path):
    torch.manual_seed(0)
    model = Residual().eval()
    upper = graph_lipschitz_upper_bound(_converted(export_onnx(model, tmp_path / "res.onnx")), SHAPE)
    assert math.isclose(upper.whole_map, graph_lipschitz_upper_bound(model, SHAPE).whole_map, rel_tol=1e-6)
    conv = graph_lipschitz_upper_bound(nn.Sequential(model.conv), SHAPE).whole_map
    head = torch.linalg.matrix_norm(model.head.weight.double(), 2).item()
    assert math.isclose(upper.whole_map, (1 + conv) * head, rel_tol=1e-6)


def _refused(params: Path, model: Path, match: str, monkeypatch, card: Path | None = None) -> None:
    """``lipbench evaluate`` refuses with exit 2 and ``match`` in the message, before any stage, writing nothing."""

    def no_stage(*args, **kwargs):
        raise AssertionError("a stage ran")

    monkeypatch.setattr(external, "evaluate_one", no_stage)
    with pytest.raises(ValueError, match=match):
        external.evaluate_foreign(load_profile(params), "digits", model, card, progress=False)
    entries = load_profile(params).path_of("metrics") / "external"
    assert not (entries / f"digits-{model.stem}.json").exists()


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()


class Exp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(torch.flatten(x, 1))[:, :10]


class DynamicWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear, self.out = nn.Linear(64, 10), nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(torch.flatten(x, 1))
        return self.out(torch.flatten(torch.matmul(h.unsqueeze(2), h.unsqueeze(1)), 1))  # a weight computed from x


def test_an_unsupported_operator_is_refused_naming_the_node(params, tmp_path, monkeypatch):
    path = export_onnx(Exp(), tmp_path / "exp.onnx")
    write_card(tmp_path / "exp.card.yaml")
    node = next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Exp")
    _refused(params, path, f"ONNX node '{node}' uses operator Exp.*supported: Abs", monkeypatch)


def test_a_dynamic_weight_is_refused(params, tmp_path, monkeypatch):
    path = export_onnx(DynamicWeight(), tmp_path / "dyn.onnx")
    write_card(tmp_path / "dyn.card.yaml")
    _refused(params, path, "product of input-dependent tensors", monkeypatch)


def test_external_data_is_refused_inside_or_outside_the_folder(params, tmp_path, monkeypatch):
    proto = onnx.load(str(export_onnx(_mlp(), tmp_path / "mlp.onnx")))
    path = tmp_path / "ext.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    write_card(tmp_path / "ext.card.yaml")
    _refused(params, path, "external file.*'weights.bin'.*save_as_external_data=False", monkeypatch)
    escaping = onnx.load(str(path), load_external_data=False)
    for tensor in escaping.graph.initializer:
        for entry in tensor.external_data:
            entry.value = "../../etc/passwd" if entry.key == "location" else entry.value
    (tmp_path / "escape.onnx").write_bytes(escaping.SerializeToString())
    write_card(tmp_path / "escape.card.yaml")
    _refused(params, tmp_path / "escape.onnx", "external file.*'../../etc/passwd'", monkeypatch)


def test_pickles_are_refused_without_unpickling(params, tmp_path, monkeypatch, no_unpickling):
    torch.save(_mlp(), tmp_path / "model.pt")
    torch.save(_mlp(), tmp_path / "disguised.onnx")
    for name in ("model.pt", "disguised.onnx"):
        write_card(tmp_path / f"{Path(name).stem}.card.yaml")
        _refused(params, tmp_path / name, "never unpickles", monkeypatch)


def test_a_fixed_batch_size_is_refused(params, tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_mlp(), torch.zeros(1, *SHAPE), str(tmp_path / "fixed.onnx"), dynamo=False, opset_version=17)
    write_card(tmp_path / "fixed.card.yaml")
    _refused(params, tmp_path / "fixed.onnx", "batch dim is fixed.*dynamic_axes", monkeypatch)


def test_an_opset_onnx2torch_cannot_convert_is_refused_with_the_fix(params, tmp_path, monkeypatch):
    model = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 10))
    path = export_onnx(model, tmp_path / "new.onnx", opset=19)
    write_card(tmp_path / "new.card.yaml")
    _refused(params, path, "AveragePool.*version=19.*opset_version=17", monkeypatch)


def test_nan_weights_are_refused(params, tmp_path, monkeypatch):
    model = _mlp()
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    path = export_onnx(model, tmp_path / "nan.onnx")
    write_card(tmp_path / "nan.card.yaml")
    _refused(params, path, "NaN or inf", monkeypatch)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"num_classes": 9, "classes": list(range(9))}, "key 'num_classes': 9 != digits's 10"),
        ({"input_shape": [64]}, r"key 'input_shape': \[64\] != digits's \[1, 8, 8\]"),
        ({"classes": [1, 0, *range(2, 10)]}, "key 'classes': must list digits's labels"),
        ({"input_range": [-1.0, 1.0]}, "key 'input_range'"),
        ({"dataset": "moons"}, "key 'dataset'"),
    ],
)
def test_a_card_contradicting_the_dataset_is_refused_before_any_attack(params, tmp_path, monkeypatch, change, match):
    path = export_onnx(_mlp(), tmp_path / "mlp.onnx")
    write_card(tmp_path / "mlp.card.yaml", **change)
    _refused(params, path, match, monkeypatch)


def test_a_missing_or_invalid_card_is_refused_naming_file_and_key(params, tmp_path, monkeypatch):
    path = export_onnx(_mlp(), tmp_path / "mlp.onnx")
    _refused(params, path, "mlp.card.yaml does not exist", monkeypatch)
    card = write_card(tmp_path / "mlp.card.yaml", claimed_clean_accuracy=97)
    with pytest.raises(ModelCardError, match="mlp.card.yaml: key 'claimed_clean_accuracy'.*0.97, not 97"):
        load_model_card(card)
    write_card(card, normalization={"mean": [0.5], "std": [0.0]})
    with pytest.raises(ModelCardError, match="key 'normalization.std'"):
        load_model_card(card)


def test_a_model_at_chance_level_is_refused(params, tmp_path, monkeypatch):
    model = _mlp()
    with torch.no_grad():
        model[3].weight.zero_(), model[3].bias.copy_(torch.arange(10.0))  # always class 9
    path = export_onnx(model, tmp_path / "chance.onnx")
    write_card(tmp_path / "chance.card.yaml")
    _refused(params, path, "at chance level.*refused for publication", monkeypatch)
    assert external.chance_threshold(10, 120) == pytest.approx(0.1 + 3 * math.sqrt(0.09 / 120))


def test_the_normalisation_is_folded_into_the_model_and_its_bound(params, tmp_path):
    path = export_onnx(_mlp(), tmp_path / "norm.onnx")
    card = load_model_card(write_card(tmp_path / "norm.card.yaml", normalization={"mean": [0.5], "std": [0.25]}))
    foreign = load_foreign(path, card, _info(params), "digits")
    plain = lipschitz_upper_bound(_mlp(), SHAPE).whole_map
    assert foreign.upper.whole_map == pytest.approx(4 * plain, rel=1e-6)
    x = torch.rand(3, *SHAPE)
    assert torch.allclose(foreign.model(x), _mlp()((x - 0.5) / 0.25), atol=1e-5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "hkr", "--weights", "w.safetensors"], "--model now names a model file.*--variant VARIANT"),
        (["--weights", "w.safetensors"], "--weights needs --variant"),
        ([], "give --model FILE.onnx"),
        (["--model", "m.onnx", "--variant", "hkr"], "--variant and --reported go with --weights"),
    ],
)
def test_the_evaluate_cli_refuses_the_old_and_mixed_forms_with_exit_2(params, argv, message, capsys):
    assert main(["evaluate", "--params", str(params), "--dataset", "digits", *argv]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_the_evaluate_cli_refuses_a_model_file_mixed_with_weights(params, tmp_path, capsys):
    path = export_onnx(_mlp(), tmp_path / "mlp.onnx")
    argv = ["--model", str(path), "--weights", "w.safetensors", "--variant", "hkr"]
    assert main(["evaluate", "--params", str(params), "--dataset", "digits", *argv]) == 2
    assert "not both" in capsys.readouterr().err
