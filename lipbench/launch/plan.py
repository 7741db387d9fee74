"""A plan: the jobs that bring DVC targets up to date, in dependency order.

Standard library only (the offline host reads it without DVC). A job is one DVC stage:
its name (DVC's address, e.g. ``train@moons`` or ``pipelines/paper/dvc.yaml:train@mnist``),
its commands, its working folder and the outputs DVC would remove before running it
(relative to the checkout's root), and the jobs of the plan it needs. Or a job is a part of
a stage (``part_of``): one model of a train stage (``train@moons/hkr/seed0``), run before
the stage, which then only collects what its parts made; a part is no DVC stage. Stages
that are up to date are not jobs: they are listed by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lipbench.io import write_json_atomic

__all__ = ["LaunchError", "Job", "Plan", "stage_kind"]


class LaunchError(ValueError):
    """A launch the user can fix: an unknown target, an option that does not apply, a bad
    ``launch:`` section, a plan file of another kind."""


def stage_kind(name: str) -> str:
    """``train`` for ``pipelines/paper/dvc.yaml:train@mnist`` (the stage's name in dvc.yaml) and for
    its parts (``pipelines/paper/dvc.yaml:train@mnist/hkr/seed0``)."""
    return name.rpartition(":")[2].partition("@")[0]


@dataclass(frozen=True)
class Job:
    """One stage to run: ``commands`` in ``wdir`` after removing ``outs``; ``needs`` are jobs of
    the same plan that must succeed first. ``part_of``: the stage this job is a part of
    ("" for a stage's own job)."""

    name: str
    commands: tuple[str, ...]
    wdir: str = "."
    needs: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    pipeline: str = "dvc.yaml"
    part_of: str = ""

    @property
    def kind(self) -> str:
        return stage_kind(self.name)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "commands": list(self.commands),
            "wdir": self.wdir,
            "needs": list(self.needs),
            "outs": list(self.outs),
            "pipeline": self.pipeline,
            "part_of": self.part_of,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        return cls(
            name=str(data["name"]),
            commands=tuple(data["commands"]),
            wdir=str(data.get("wdir", ".")),
            needs=tuple(data.get("needs", ())),
            outs=tuple(data.get("outs", ())),
            pipeline=str(data.get("pipeline", "dvc.yaml")),
            part_of=str(data.get("part_of", "")),
        )


@dataclass(frozen=True)
class Plan:
    """Jobs in dependency order (every job after the jobs it needs); ``up_to_date``: the
    targets' other stages, which need not run."""

    jobs: tuple[Job, ...]
    targets: tuple[str, ...] = ()
    up_to_date: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for job in self.jobs:
            if job.name in seen:
                raise LaunchError(f"the plan lists {job.name} twice")
            missing = [need for need in job.needs if need not in seen]
            if missing:
                raise LaunchError(f"{job.name} needs {', '.join(missing)}, which the plan does not run before it")
            seen.add(job.name)

    def __len__(self) -> int:
        return len(self.jobs)

    def job(self, name: str) -> Job:
        for job in self.jobs:
            if job.name == name:
                return job
        raise LaunchError(f"no job {name!r} in the plan; it has {', '.join(job.name for job in self.jobs) or 'none'}")

    def levels(self) -> list[list[Job]]:
        """Jobs by depth: level 0 needs nothing, level k needs only jobs of levels below k."""
        depth: dict[str, int] = {}
        for job in self.jobs:
            depth[job.name] = 1 + max((depth[need] for need in job.needs), default=-1)
        levels: list[list[Job]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for job in self.jobs:
            levels[depth[job.name]].append(job)
        return levels

    def dependants(self, names: Iterable[str]) -> list[str]:
        """Every job that needs one of ``names``, directly or not, in plan order."""
        reached = set(names)
        found = []
        for job in self.jobs:
            if reached.intersection(job.needs):
                reached.add(job.name)
                found.append(job.name)
        return found

    def without(self, names: Iterable[str]) -> Plan:
        """The plan less ``names`` (finished elsewhere): jobs no longer need them."""
        dropped = set(names)
        jobs = tuple(
            replace(job, needs=tuple(need for need in job.needs if need not in dropped))
            for job in self.jobs
            if job.name not in dropped
        )
        return Plan(jobs, self.targets, self.up_to_date, self.extra)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "lipbench-launch-plan",
            "targets": list(self.targets),
            "jobs": [job.to_json() for job in self.jobs],
            "up_to_date": list(self.up_to_date),
            **dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        if data.get("kind") != "lipbench-launch-plan":
            raise LaunchError("not a lipbench launch plan (no kind: lipbench-launch-plan); make it again")
        known = {"kind", "targets", "jobs", "up_to_date"}
        return cls(
            jobs=tuple(Job.from_json(job) for job in data["jobs"]),
            targets=tuple(data.get("targets", ())),
            up_to_date=tuple(data.get("up_to_date", ())),
            extra={key: value for key, value in data.items() if key not in known},
        )

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> Plan:
        if not path.is_file():
            raise LaunchError(f"no plan at {path}; make one first (tools/offline_bundle.py make ...)")
        return cls.from_json(json.loads(path.read_text()))
