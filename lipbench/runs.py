"""The identity of a run and where every stage puts its files.

:class:`RunKey` names one trained (or externally supplied) model of a profile:
``(dataset, model, seed)``, where ``model`` is a *model variant* of the profile's ``models``
list (a registered method plus its parameters, e.g. ``hkr_m2_12``). Every stage, the report
and the CLI use it; nothing else identifies a run.

:data:`PATH_TEMPLATES` are the only templates of output paths. ``dvc.yaml`` spells the
same paths in DVC's syntax (``${paths.models}/${item.dataset}/...``); a test renders both
for every profile and requires them to agree. Light module: no torch, no numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lipbench.profiles import Profile

__all__ = [
    "EVALUATION_STAGES",
    "MODEL_STAGES",
    "PATH_TEMPLATES",
    "RunKey",
    "Layout",
    "run_keys",
]

#: The per-dataset evaluation stages, in pipeline order.
EVALUATION_STAGES = ("certify", "attack", "verify")

#: Every per-dataset stage after training that the report reads: the evaluation stages, then
#: the explain stage (:mod:`lipbench.explain`), which reads the certify and attack outputs.
MODEL_STAGES = (*EVALUATION_STAGES, "explain")

#: Path templates; ``{data}``, ``{models}``, ``{evaluation}``, ``{metrics}`` and ``{reports}``
#: are the profile's ``paths`` entries.
PATH_TEMPLATES: Mapping[str, str] = {
    "validated": "{data}/validated.json",
    "prepared": "{data}/prepared/{dataset}",
    "model_dir": "{models}/{dataset}/{model}/seed{seed}",
    "weights": "{models}/{dataset}/{model}/seed{seed}/weights.safetensors",
    "models_dataset_dir": "{models}/{dataset}",
    "checkpoint": "{models}/checkpoints/{dataset}/{model}/seed{seed}/checkpoint.pt",
    "train_metrics_dir": "{metrics}/train/{dataset}/{model}/seed{seed}",
    "train_summary": "{metrics}/train/{dataset}/{model}/seed{seed}/metrics.json",
    "train_history_dataset_dir": "{metrics}/train_history/{dataset}",
    "train_history": "{metrics}/train_history/{dataset}/{model}/seed{seed}/history.json",
    "stage_dataset_dir": "{evaluation}/{stage}/{dataset}",
    "stage_dir": "{evaluation}/{stage}/{dataset}/{model}/seed{seed}",
    "reuse_dir": "{evaluation}/reuse/{stage}/{dataset}/{model}/seed{seed}",
    "external_weights": "{data}/external/{dataset}/{external}/weights.safetensors",
    "external_stage_dir": "{evaluation}/external/{stage}/{dataset}/{external}",
    "stage_metrics": "{metrics}/{stage}/{dataset}.json",
    "external_entries": "{metrics}/external",
}

_PATH_KEYS = ("data", "models", "evaluation", "metrics", "reports")


@dataclass(frozen=True, order=True)
class RunKey:
    """One model of a profile: ``(dataset, model variant, seed)``; ``external`` names a
    model evaluated with ``lipbench evaluate`` (trained elsewhere)."""

    dataset: str
    model: str
    seed: int
    external: str | None = None

    @property
    def label(self) -> str:
        if self.external is not None:
            return f"{self.dataset}/external/{self.external}"
        return f"{self.dataset}/{self.model}/seed{self.seed}"

    @property
    def seed_name(self) -> str:
        """``seed<k>``: the key of this run in a stage's per-dataset JSON."""
        return f"seed{self.seed}"


class Layout:
    """Every output path of a profile, rendered from :data:`PATH_TEMPLATES`."""

    def __init__(self, paths: Mapping[str, str]) -> None:
        missing = [key for key in _PATH_KEYS if key not in paths]
        if missing:
            raise ValueError(f"paths must give {', '.join(_PATH_KEYS)}; missing {', '.join(missing)}")
        self.paths = {key: str(paths[key]) for key in _PATH_KEYS}

    @classmethod
    def of(cls, profile: Profile) -> Layout:
        return cls(profile.params["paths"])

    def render(self, template: str, **fields: object) -> Path:
        return Path(PATH_TEMPLATES[template].format(**self.paths, **fields))

    def _run(self, template: str, key: RunKey) -> Path:
        return self.render(template, dataset=key.dataset, model=key.model, seed=key.seed)

    def validated(self) -> Path:
        """The ``validate`` stage's marker (the profile resolved; every prepare stage waits for it)."""
        return self.render("validated")

    def prepared(self, dataset: str) -> Path:
        return self.render("prepared", dataset=dataset)

    def models_dataset_dir(self, dataset: str) -> Path:
        """The train stage's DVC output folder for a dataset (one sub-folder per model)."""
        return self.render("models_dataset_dir", dataset=dataset)

    def model_dir(self, key: RunKey) -> Path:
        """``lipbench train --out``: the weights (DVC-cached, byte-deterministic)."""
        return self._run("model_dir", key)

    def weights(self, key: RunKey) -> Path:
        if key.external is not None:
            return self.render("external_weights", dataset=key.dataset, external=key.external)
        return self._run("weights", key)

    def checkpoint(self, key: RunKey) -> Path:
        """The epoch checkpoint (resume state), outside the train stage's DVC output: its bytes
        differ between identical runs and DVC removes the output folder before a rerun."""
        return self._run("checkpoint", key)

    def train_metrics_dir(self, key: RunKey) -> Path:
        """``lipbench train --metrics``: the train summary (``metrics.json``)."""
        return self._run("train_metrics_dir", key)

    def train_summary(self, key: RunKey) -> Path:
        return self._run("train_summary", key)

    def train_history(self, key: RunKey) -> Path:
        """Per-epoch rows (``dvc plots``), apart from the train summaries: DVC plots a folder."""
        return self._run("train_history", key)

    def train_history_dataset_dir(self, dataset: str) -> Path:
        return self.render("train_history_dataset_dir", dataset=dataset)

    def stage_dataset_dir(self, stage: str, dataset: str) -> Path:
        """A per-dataset evaluation stage's DVC output folder (one sub-folder per model)."""
        return self.render("stage_dataset_dir", stage=stage, dataset=dataset)

    def stage_dir(self, stage: str, key: RunKey) -> Path:
        """One model's outputs of an evaluation stage (``<stage>.npz`` and ``summary.json``)."""
        if key.external is not None:
            return self.render("external_stage_dir", stage=stage, dataset=key.dataset, external=key.external)
        return self.render("stage_dir", stage=stage, dataset=key.dataset, model=key.model, seed=key.seed)

    def reuse_dir(self, stage: str, key: RunKey) -> Path:
        """A copy of a model's last outputs of a stage (``train`` included), outside DVC's
        outputs (which DVC removes before it reruns a stage): unchanged models are copied
        back, not recomputed."""
        return self.render("reuse_dir", stage=stage, dataset=key.dataset, model=key.model, seed=key.seed)

    def stage_arrays(self, stage: str, key: RunKey) -> Path:
        return self.stage_dir(stage, key) / f"{stage}.npz"

    def stage_summary(self, stage: str, key: RunKey) -> Path:
        return self.stage_dir(stage, key) / "summary.json"

    def stage_metrics(self, stage: str, dataset: str) -> Path:
        """A stage's per-dataset JSON (git-tracked): every model's summary."""
        return self.render("stage_metrics", stage=stage, dataset=dataset)

    def external_entries(self) -> Path:
        """Leaderboard entries of externally trained models (``lipbench evaluate``)."""
        return self.render("external_entries")

    @property
    def reports(self) -> Path:
        return Path(self.paths["reports"])

    @property
    def scores(self) -> Path:
        """The scalars DVC shows as metrics (written by the report stage)."""
        return self.reports / "scores.json"


def run_keys(profile: Profile, dataset: str | None = None) -> list[RunKey]:
    """Every trained model of the profile (datasets x models x seeds), in profile order."""
    datasets = profile.datasets if dataset is None else [dataset]
    return [RunKey(d, m, s) for d in datasets for m in profile.models for s in profile.seeds]
