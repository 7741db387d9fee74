"""Where the evaluation stages put their outputs (no heavy imports: the report reads these).

Per model: ``<evaluation>/<stage>/<dataset>/<method>/seed<k>/`` (externally trained
checkpoints: ``<evaluation>/external/<stage>/<dataset>/<name>/``); per dataset, the headline
numbers in ``<metrics>/<stage>/<dataset>.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lipbench.profiles import Profile

__all__ = ["STAGES", "ModelRun", "output_dir", "stage_metrics_path"]

STAGES = ("certify", "attack", "verify")


@dataclass(frozen=True)
class ModelRun:
    """A model to evaluate; ``external`` names an externally trained checkpoint."""

    dataset: str
    method: str
    seed: int
    weights: Path
    external: str | None = None

    @property
    def label(self) -> str:
        if self.external is not None:
            return f"{self.dataset}/external/{self.external}"
        return f"{self.dataset}/{self.method}/seed{self.seed}"


def output_dir(profile: Profile, stage: str, run: ModelRun) -> Path:
    if run.external is not None:
        return profile.path_of("evaluation") / "external" / stage / run.dataset / run.external
    return profile.path_of("evaluation") / stage / run.dataset / run.method / f"seed{run.seed}"


def stage_metrics_path(profile: Profile, stage: str, dataset: str) -> Path:
    return profile.path_of("metrics") / stage / f"{dataset}.json"
