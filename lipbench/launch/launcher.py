"""``lipbench launch``: bring DVC targets up to date with jobs run by submitit.

The plan comes from DVC (:class:`~lipbench.launch.stages.DvcStages`), each train stage fanned
out into a job per model before it (its parts); the local executor runs it ``--jobs`` at a
time (:func:`~lipbench.launch.runner.run_local`), the Slurm executor submits it with
``afterok`` dependencies (:mod:`~lipbench.launch.slurm`) and waits. Every finished stage is
committed as ``dvc repro`` would, so rerunning ``launch`` (or ``dvc repro``) runs only what
is missing. Records and logs go to ``.launch/<time>/``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lipbench.io import write_json_atomic
from lipbench.launch.plan import Job, LaunchError, Plan
from lipbench.launch.runner import DONE_STATES, JobRecord, local_environment, log_tail, run_local
from lipbench.launch.slurm import SlurmOptions, slurm_options, submit_plan, wait_for_jobs

__all__ = ["EXECUTORS", "SLURM_OPTIONS", "LaunchResult", "job_environment", "launch", "report"]

EXECUTORS = ("local", "slurm")
#: Slurm resources: ``launch:`` key -> command-line option.
SLURM_OPTIONS = {
    "partition": "--slurm-partition",
    "gpus_per_job": "--gpus-per-job",
    "cpus_per_job": "--cpus-per-job",
    "mem_gb": "--mem-gb",
    "time": "--time",
    "account": "--slurm-account",
}


@dataclass(frozen=True)
class LaunchResult:
    plan: Plan
    records: list[JobRecord]
    folder: Path | None

    @property
    def ok(self) -> bool:
        return all(record.state in DONE_STATES for record in self.records)


def check_options(executor: str, jobs: int | None, slurm: Mapping[str, Any]) -> None:
    """Options that do not apply to the executor are errors (before any work)."""
    if executor not in EXECUTORS:
        raise LaunchError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    given = [SLURM_OPTIONS[key] for key, value in slurm.items() if value is not None]
    if executor != "slurm" and given:
        raise LaunchError(f"{given[0]} is a Slurm option; add --executor slurm or drop {given[0]}")
    if executor == "slurm" and jobs is not None:
        raise LaunchError("--jobs sets how many local processes run at once; Slurm schedules its jobs itself: drop --jobs")
    if jobs is not None and jobs < 1:
        raise LaunchError(f"--jobs must be at least 1, got {jobs}")


def pipeline_options(root: Path, plan: Plan, overrides: Mapping[str, Any]) -> dict[str, SlurmOptions]:
    """Slurm resources per pipeline of the plan: its params.yaml's ``launch:`` section
    (optional) with the command-line ``overrides`` on top; checked before anything runs."""
    import yaml

    options = {}
    for pipeline in dict.fromkeys(job.pipeline for job in plan.jobs):
        params = root / Path(pipeline).parent / "params.yaml"
        loaded = yaml.safe_load(params.read_text()) if params.is_file() else None
        section = loaded.get("launch") if isinstance(loaded, Mapping) else None
        options[pipeline] = slurm_options(section, overrides, source=str(params.relative_to(root)))
    return options


def job_environment(executor: str, jobs: int) -> tuple[dict[str, str], tuple[str, ...]]:
    """Variables set and unset for the jobs' commands: ``lipbench`` and ``dvc`` of this Python
    first on PATH, and for local jobs threads and GPUs (:func:`~lipbench.launch.runner.local_environment`)."""
    environment = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONUNBUFFERED": "1",
    }
    if executor != "local":
        return environment, ()
    local, unset = local_environment(jobs)
    return environment | local, unset


def _settle_leading(stages: Any, plan: Plan) -> tuple[Plan, list[JobRecord]]:
    """Before a Slurm submission: the jobs whose inputs are final already get DVC's checks
    (up to date, run-cache), as ``dvc repro`` would; those settled are not submitted (the
    parts of a train stage that will not run are ``skipped``, then the stage is settled)."""
    settled: list[JobRecord] = []
    for job in plan.jobs:
        if all(need in {record.name for record in settled} for need in job.needs):
            state = stages.settle(job)
            if state != "run":
                settled.append(JobRecord(job.name, state, job.commands))
    return plan.without(record.name for record in settled), settled


def launch(
    root: Path,
    targets: Sequence[str],
    *,
    executor: str = "local",
    jobs: int | None = None,
    force: bool = False,
    slurm: Mapping[str, Any] | None = None,
    folder: Path | None = None,
    dry: bool = False,
    poll_s: float | None = None,
    base: Path | None = None,
) -> LaunchResult:
    """Run the stages of ``targets`` (relative to ``base``, default ``root``) that are not up
    to date (see the module docstring)."""
    from lipbench.launch.stages import DvcStages

    slurm = dict(slurm or {})
    check_options(executor, jobs, slurm)
    root = Path(root).resolve()
    stages = DvcStages(root, force=force)
    plan = stages.plan(list(targets) or ["dvc.yaml"], base=base)
    options = pipeline_options(root, plan, slurm)
    if dry or not plan.jobs:
        return LaunchResult(plan, [], None)
    folder = (root / ".launch" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}") if folder is None else Path(folder).resolve()
    environment, unset = job_environment(executor, jobs or 1)
    print(f"lipbench launch: {len(plan)} jobs ({executor}); logs and records in {folder}", flush=True)
    if executor == "local":
        poll = 0.2 if poll_s is None else poll_s
        records = run_local(plan, root, folder, jobs=jobs or 1, environment=environment, unset=unset, hooks=stages, poll_s=poll)
    else:
        remaining, records = _settle_leading(stages, plan)
        submitted = submit_plan(remaining, root, folder, options, environment)
        finished = {record.name: record for record in wait_for_jobs(remaining, submitted, stages.commit, poll_s or 10.0)}
        records = [finished.get(job.name) or next(r for r in records if r.name == job.name) for job in plan.jobs]
    result = LaunchResult(plan, records, folder)
    write_json_atomic(folder / "launch.json", {"plan": plan.to_json(), "records": [record.to_json() for record in records]})
    return result


def _after(job: Job, plan: Plan) -> str:
    """`` (after prepare@moons, its 13 parts)``: what ``job`` needs, its own parts counted."""
    parts = [need for need in job.needs if plan.job(need).part_of == job.name]
    others = [need for need in job.needs if need not in parts] + ([f"its {len(parts)} parts"] if parts else [])
    return f" (after {', '.join(others)})" if others else ""


def _seconds(record: JobRecord) -> str:
    return "" if record.seconds is None else f"{record.seconds:.1f} s"


def report(result: LaunchResult, tail_lines: int = 30) -> str:
    """The plan (when nothing ran) or every job's outcome, a summary line, and the end of the
    log of every job that failed."""
    plan, lines = result.plan, []
    if not result.records:
        if not plan.jobs:
            return f"lipbench launch: nothing to run: {len(plan.up_to_date)} stages up to date"
        for depth, level in enumerate(plan.levels()):
            lines += [f"level {depth}: {job.name}{_after(job, plan)}" for job in level]
        parts = sum(1 for job in plan.jobs if job.part_of)
        counted = f"{len(plan)} jobs to run" + (f" ({parts} of them parts of train stages)" if parts else "")
        return "\n".join([*lines, f"lipbench launch: {counted}; {len(plan.up_to_date)} stages up to date"])
    width = max(len(record.name) for record in result.records)
    for record in result.records:
        lines.append(f"  {record.state:<11} {record.name:<{width}} {_seconds(record):>9}  {record.note}".rstrip())
    counts: dict[str, int] = {}
    for record in result.records:
        counts[record.state] = counts.get(record.state, 0) + 1
    summary = ", ".join(f"{count} {state}" for state, count in counts.items())
    lines.append(f"lipbench launch: {summary}; {len(plan.up_to_date)} other stages were up to date; records in {result.folder}")
    for record in result.records:
        if record.state in ("failed", "interrupted"):
            status = "" if record.exit_status is None else f" (exit status {record.exit_status})"
            lines.append(f"lipbench launch: {record.name} {record.state}{status}; the end of its log {record.log}:")
            lines += ["    " + line for line in log_tail(record.log, tail_lines).splitlines()]
    return "\n".join(lines)
