"""bf16 / compiled attacks: they change how attacks search, never how successes are checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lipbench.evaluate.attacks import ATTACKS, AutocastLogits, run_attack_suite

EPS = [0.3, 1.0]
FAST_AUTOATTACK = {"version": "custom", "attacks": ["apgd-ce"], "n_iter": 10}


class DtypeRecorder(nn.Module):
    """Wraps a model; records the dtype of its output on every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.dtypes.append(out.dtype)
        return out


def test_autocast_logits_run_in_bf16_and_return_float32():
    recorder = DtypeRecorder(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    out = AutocastLogits(recorder, "cpu")(torch.rand(3, 1, 8, 8))
    assert recorder.dtypes == [torch.bfloat16] and out.dtype == torch.float32


def test_bf16_attacks_query_bf16_and_every_success_holds_in_float32(toy10):
    recorder = DtypeRecorder(toy10.model)
    res = run_attack_suite(
        recorder, toy10.x, toy10.y, EPS, ["fgm", "pgd_l2", "deepfool_l2", "autoattack_l2"], toy10.radius,
        precision="bf16", progress=False, n_examples=len(toy10.x), options={"autoattack_l2": FAST_AUTOATTACK},
    )  # fmt: skip
    assert torch.bfloat16 in recorder.dtypes  # the attacks searched in bf16 ...
    assert torch.float32 in recorder.dtypes  # ... and predictions were checked in float32
    assert res.summary()["precision"] == "bf16"
    assert res.success["pgd_l2"][-1].any()  # the search still finds adversarial examples
    for name in ("fgm", "pgd_l2", "autoattack_l2"):
        for e, eps in enumerate(EPS):
            found = res.success[name][e]
            x_adv = torch.from_numpy(res.examples[name][e][found])
            assert ((x_adv - toy10.x[found]).flatten(1).norm(dim=1) <= eps * (1 + 1e-6)).all()
            with torch.no_grad():
                assert (toy10.model(x_adv).argmax(1) != toy10.y[found]).all()  # float32 model
    norms = res.min_norms["deepfool_l2"]
    found = np.isfinite(norms) & res.clean_correct
    with torch.no_grad():
        x_adv = torch.from_numpy(res.examples["deepfool_l2"][found])
        assert (toy10.model(x_adv).argmax(1) != toy10.y[found]).all()
    assert not res.certificate_violations.any()


def test_bf16_robust_accuracy_is_close_to_float32(toy10):
    kwargs = dict(attacks=["pgd_l2"], certified_radius=toy10.radius, progress=False)
    fp32 = run_attack_suite(toy10.model, toy10.x, toy10.y, EPS, **kwargs)
    bf16 = run_attack_suite(toy10.model, toy10.x, toy10.y, EPS, precision="bf16", **kwargs)
    assert np.abs(bf16.robust_accuracy - fp32.robust_accuracy).max() <= 2 / len(toy10.x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "fp16"}, "precision must be one of fp32, bf16, got 'fp16'"),
        ({"compile_model": "yes"}, "compile_model must be True or False, got 'yes'"),
    ],
)
def test_bad_precision_settings_fail_before_any_attack(kwargs, message, toy10, counting):
    model = counting(toy10.model)
    with pytest.raises(ValueError, match=message):
        run_attack_suite(model, toy10.x, toy10.y, EPS, ["fgm"], progress=False, **kwargs)
    with pytest.raises(ValueError, match=message):
        ATTACKS.get("fgm")(model, toy10.x, toy10.y, EPS, **kwargs)
    assert model.calls == 0


@pytest.mark.slow
def test_compiled_attacks_give_the_eager_results(toy10):
    kwargs = dict(attacks=["fgm", "pgd_l2"], certified_radius=toy10.radius, progress=False)
    eager = run_attack_suite(toy10.model, toy10.x, toy10.y, EPS, **kwargs)
    compiled = run_attack_suite(toy10.model, toy10.x, toy10.y, EPS, compile_model=True, **kwargs)
    assert compiled.compiled and compiled.summary()["compiled"] is True
    np.testing.assert_array_equal(compiled.robust, eager.robust)
    assert set(compiled.success) == set(eager.success) == {"fgm", "pgd_l2"}
    for name in eager.success:
        np.testing.assert_array_equal(compiled.success[name], eager.success[name], err_msg=name)
    assert compiled.calls == eager.calls and compiled.calls_by_eps == eager.calls_by_eps
