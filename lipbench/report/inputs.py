"""What the report reads: the pipeline's outputs, located, checked up front and loaded.

Only stage outputs are read (metrics JSON, per-point ``.npz`` arrays, prepared test
inputs), never models. :func:`check_inputs` names every missing file and the command
that produces it before any expensive work starts.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lipbench.evaluate.layout import STAGES, ModelRun, output_dir, stage_metrics_path
from lipbench.io import read_json
from lipbench.profiles import Profile

__all__ = [
    "ReportInputError",
    "ModelKey",
    "model_keys",
    "train_metrics_path",
    "arrays_path",
    "check_inputs",
    "read_train",
    "read_stage",
    "stage_summary",
    "load_arrays",
    "load_test_inputs",
    "display_name",
    "latex_name",
]

_ARRAY_STAGES = ("certify", "attack")
_CERTIFY_KEYS = ("radius", "correct", "labels", "logits", "gradients")
_ATTACK_KEYS = ("epsilons", "robust", "clean_correct", "example_indices")
_GRID_KEYS = ("grid_x", "grid_y", "grid_values")


class ReportInputError(FileNotFoundError):
    """A pipeline output the report needs is missing; the message says which stage makes it."""


@dataclass(frozen=True)
class ModelKey:
    """One trained model of a profile: (dataset, model, seed)."""

    dataset: str
    model: str
    seed: int

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.model}/seed{self.seed}"


def model_keys(profile: Profile, dataset: str | None = None) -> list[ModelKey]:
    """Every (dataset, model, seed) of the profile, in profile order."""
    datasets = profile.datasets if dataset is None else [dataset]
    return [ModelKey(d, m, s) for d in datasets for m in profile.models for s in profile.seeds]


def train_metrics_path(profile: Profile, key: ModelKey, name: str = "metrics.json") -> Path:
    """A file of the train stage's metrics folder (``--metrics`` of ``lipbench train`` in dvc.yaml)."""
    return profile.path_of("metrics") / "train" / key.dataset / key.model / f"seed{key.seed}" / name


def _model_dir(profile: Profile, key: ModelKey) -> Path:
    """The train stage's ``--out`` folder (weights), as in dvc.yaml."""
    return profile.path_of("models") / key.dataset / key.model / f"seed{key.seed}"


def arrays_path(profile: Profile, stage: str, key: ModelKey) -> Path:
    """The per-point ``<stage>.npz`` of one model, in the evaluation stage's output folder."""
    run = ModelRun(key.dataset, key.model, key.seed, _model_dir(profile, key) / "weights.safetensors")
    return output_dir(profile, stage, run) / f"{stage}.npz"


def _command(profile: Profile, stage: str, dataset: str, key: ModelKey | None = None) -> str:
    params = shlex.quote(str(profile.path))
    if stage == "train" and key is not None:
        out = shlex.quote(str(_model_dir(profile, key)))
        metrics = shlex.quote(str(train_metrics_path(profile, key).parent))
        return (
            f"lipbench train --params {params} --dataset {dataset} --method {key.model} --seed {key.seed} "
            f"--out {out} --metrics {metrics}"
        )
    return f"lipbench {stage} --params {params} --dataset {dataset}"


def _prepared_manifest(profile: Profile, dataset: str) -> Path:
    from lipbench.data.base import MANIFEST_NAME, prepared_dir

    return prepared_dir(profile.path_of("data"), dataset) / MANIFEST_NAME


def check_inputs(profile: Profile) -> None:
    """Raise :class:`ReportInputError` listing every missing input and the stage to run."""
    problems: list[str] = []

    def missing(what: str, stage: str, dataset: str, key: ModelKey | None = None) -> None:
        problems.append(f"{what} ({stage} stage): run `dvc repro` or `{_command(profile, stage, dataset, key)}`")

    for dataset in profile.datasets:
        if not _prepared_manifest(profile, dataset).is_file():
            missing(f"{_prepared_manifest(profile, dataset)} is missing", "prepare", dataset)
        stage_models: dict[str, Mapping[str, Any]] = {}
        for stage in STAGES:
            path = stage_metrics_path(profile, stage, dataset)
            if path.is_file():
                stage_models[stage] = read_json(path).get("models", {})
            else:
                missing(f"{path} is missing", stage, dataset)
        for key in model_keys(profile, dataset):
            if not train_metrics_path(profile, key).is_file():
                missing(f"{train_metrics_path(profile, key)} is missing", "train", dataset, key)
            for stage, models in stage_models.items():
                if f"seed{key.seed}" not in models.get(key.model, {}):
                    missing(f"{stage_metrics_path(profile, stage, dataset)} has no entry for {key.label}", stage, dataset)
            for stage in _ARRAY_STAGES:
                path = arrays_path(profile, stage, key)
                if not path.is_file():
                    missing(f"{path} is missing", stage, dataset)
                    continue
                with np.load(path) as arrays:
                    needed = list(_CERTIFY_KEYS if stage == "certify" else _ATTACK_KEYS)
                    if stage == "certify" and "gradients" in arrays.files and arrays["gradients"].shape[1:] == (2,):
                        needed += _GRID_KEYS  # 2-D inputs: the level-set figure needs the grid
                    absent = [name for name in needed if name not in arrays.files]
                if absent:
                    missing(f"{path} lacks the arrays {', '.join(absent)} (made by an older lipbench)", stage, dataset)
    if problems:
        shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
        raise ReportInputError(
            f"the report of profile {profile.name!r} ({profile.path}) cannot be built, inputs are missing:\n  "
            + "\n  ".join(shown)
        )


def read_train(profile: Profile, key: ModelKey) -> dict[str, Any]:
    """The train stage's ``metrics.json`` of one model."""
    return read_json(train_metrics_path(profile, key))


def read_stage(profile: Profile, stage: str, dataset: str) -> dict[str, Any]:
    """A stage's dataset JSON (``{"seconds", "models": {model: {"seed<k>": summary}}, ...}``)."""
    return read_json(stage_metrics_path(profile, stage, dataset))


def stage_summary(stage_json: Mapping[str, Any], key: ModelKey) -> dict[str, Any]:
    return dict(stage_json["models"][key.model][f"seed{key.seed}"])


def load_arrays(profile: Profile, stage: str, key: ModelKey) -> dict[str, np.ndarray]:
    """The per-point arrays of one model (``certify`` or ``attack``), loaded into memory."""
    with np.load(arrays_path(profile, stage, key)) as arrays:
        return {name: arrays[name] for name in arrays.files}


def load_test_inputs(profile: Profile, dataset: str, count: int) -> tuple[np.ndarray, np.ndarray, Any]:
    """The first ``count`` test points ``(x, y)`` (the evaluated ones, same order) and the dataset info."""
    from lipbench.data import load_dataset, take_tensors

    splits = load_dataset(dataset, profile.path_of("data"), profile.prepare_params(dataset))
    x, y = take_tensors(splits.test, count)
    return x.numpy(), y.numpy(), splits.info


_GREEK = {"α": r"\alpha", "β": r"\beta", "λ": r"\lambda", "γ": r"\gamma", "ε": r"\epsilon"}
_NAME = re.compile(r"^(?P<base>[^_^\s]+)(?:_(?P<sub>[^_^\s]+))?(?:\^(?P<sup>[^_^\s]+))?$")


def _math_part(text: str) -> str:
    if text in _GREEK:
        return _GREEK[text]
    return text if len(text) == 1 else rf"\mathrm{{{text}}}"


def latex_name(paper_name: str) -> str:
    """``hKR_α^m`` -> ``$\\mathrm{hKR}_{\\alpha}^{m}$`` (LaTeX and matplotlib mathtext)."""
    match = _NAME.match(paper_name)
    if not match or not (match["sub"] or match["sup"]):
        return paper_name
    text = rf"\mathrm{{{match['base']}}}"
    if match["sub"]:
        text += f"_{{{_math_part(match['sub'])}}}"
    if match["sup"]:
        text += f"^{{{_math_part(match['sup'])}}}"
    return f"${text}$"


def display_name(train_metrics: Mapping[str, Any]) -> str:
    """A model's label in figures: the paper's name (mathtext), plus the variant when it differs."""
    name = latex_name(str(train_metrics.get("paper_name") or train_metrics.get("model", "?")))
    model, method = train_metrics.get("model"), train_metrics.get("method")
    return f"{name} ({model})" if model and method and model != method else name
