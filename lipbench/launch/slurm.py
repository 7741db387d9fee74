"""A plan as Slurm jobs through submitit's SlurmExecutor: one sbatch job per job of the plan
(a stage, or a part of a train stage: one model), submitted in dependency order, each with
``--dependency=afterok:<the jobs it needs>`` and ``--kill-on-invalid-dep=yes`` (a failed
job's dependants are cancelled, never left pending).

Resources come from the ``launch:`` section of the pipeline's params.yaml, with the
command-line options on top. Stages that never use a GPU (``cpu_stages``: validate, prepare
and report unless said otherwise) ask for none.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lipbench.launch.plan import Job, LaunchError, Plan
from lipbench.launch.runner import JobRecord, JobSpec, finished_record, job_spec, run_job

__all__ = ["SlurmOptions", "minutes", "slurm_options", "submit_plan", "wait_for_jobs"]


@dataclass(frozen=True)
class SlurmOptions:
    """What each job asks Slurm for; ``sbatch`` holds any other sbatch option (``{mail-type: END}``)."""

    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    time: int = 240
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    cpu_stages: tuple[str, ...] = ("validate", "prepare", "report")
    sbatch: Mapping[str, str] = field(default_factory=dict)

    def parameters(self, job: Job, dependency: Sequence[str]) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters for ``job`` after the Slurm jobs ``dependency``
        (every key given, None where unset: the executor keeps earlier jobs' parameters)."""
        gpus = 0 if job.kind in self.cpu_stages else self.gpus_per_job
        additional = {"kill-on-invalid-dep": "yes"} | {key: str(value) for key, value in self.sbatch.items()}
        return {
            "job_name": job.name.rpartition(":")[2],
            "partition": self.partition,
            "time": self.time,
            "gpus_per_node": gpus or None,
            "cpus_per_task": self.cpus_per_job,
            "mem": None if self.mem_gb is None else f"{round(self.mem_gb * 1024)}M",
            "account": self.account,
            "qos": self.qos,
            "constraint": self.constraint,
            "dependency": f"afterok:{':'.join(dependency)}" if dependency else None,
            "additional_parameters": additional,
            "stderr_to_stdout": True,
        }


def minutes(value: object, what: str = "time") -> int:
    """Slurm's time limit in minutes, from what ``sbatch --time`` accepts: ``240`` (minutes),
    ``"90:30"`` (minutes:seconds), ``"4:00:00"`` (hours:minutes:seconds) or ``"1-12"``,
    ``"1-12:30"``, ``"1-12:30:00"`` (days-hours[:minutes[:seconds]]); seconds round up."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value).strip() if isinstance(value, str) else ""
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not all(part.isdigit() for part in [*parts, *([days] if days else [])]) or not 1 <= len(parts) <= 3:
        raise LaunchError(f"{what} must be minutes (240) or Slurm's [days-]hours:minutes:seconds (4:00:00), got {value!r}")
    numbers = [int(part) for part in parts]
    if days:  # days-hours[:minutes[:seconds]]
        hours, mins, seconds = (numbers + [0, 0])[:3]
    elif len(numbers) == 3:  # hours:minutes:seconds
        hours, mins, seconds = numbers
    else:  # minutes[:seconds]
        hours, mins, seconds = 0, numbers[0], (numbers + [0])[1]
    total = int(days or 0) * 1440 + hours * 60 + mins + (seconds > 0)
    if total <= 0:
        raise LaunchError(f"{what} must be positive, got {value!r}")
    return total


def _check(key: str, value: Any, where: str) -> Any:
    """One ``launch:`` value of the right type (the error names the key and the fix)."""
    if key == "time":
        return minutes(value, f"{where}time")
    if key in ("gpus_per_job", "cpus_per_job"):
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "gpus_per_job" else 1):
            raise LaunchError(f"{where}{key} must be a whole number >= {0 if key == 'gpus_per_job' else 1}, got {value!r}")
        return value
    if key == "mem_gb":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise LaunchError(f"{where}mem_gb must be a positive number of GB, got {value!r}")
        return float(value)
    if key == "cpu_stages":
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise LaunchError(
                f"{where}cpu_stages must be a list of stage names (e.g. [validate, prepare, report]), got {value!r}"
            )
        return tuple(value)
    if key == "sbatch":
        if not isinstance(value, Mapping):
            raise LaunchError(f"{where}sbatch must map sbatch options to values (e.g. {{mail-type: END}}), got {value!r}")
        return dict(value)
    if not isinstance(value, str) or not value:
        raise LaunchError(f"{where}{key} must be a non-empty string, got {value!r}")
    return value


def slurm_options(section: Mapping[str, Any] | None, overrides: Mapping[str, Any], source: str = "params.yaml") -> SlurmOptions:
    """The ``launch:`` section of ``source`` (may be absent) with ``overrides`` (options given
    on the command line, None = not given) on top; an unknown key is an error naming it."""
    accepted = [item.name for item in fields(SlurmOptions)]
    section = {} if section is None else section
    if not isinstance(section, Mapping):
        raise LaunchError(f"{source}: launch must be a mapping of Slurm resources ({', '.join(accepted)}), got {section!r}")
    unknown = sorted(set(section) - set(accepted))
    if unknown:
        raise LaunchError(f"{source}: unknown key launch.{unknown[0]}; accepted keys: {', '.join(accepted)}")
    values = {key: _check(key, value, f"{source}: launch.") for key, value in section.items()}
    values |= {key: _check(key, value, "--") for key, value in overrides.items() if value is not None}
    return replace(SlurmOptions(), **values)


def slurm_executor(folder: Path) -> Any:
    """submitit's SlurmExecutor writing its scripts and logs under ``folder/submitit``."""
    import submitit

    return submitit.SlurmExecutor(folder=str(folder / "submitit" / "%j"))


def submit_plan(
    plan: Plan,
    root: Path,
    folder: Path,
    options: Mapping[str, SlurmOptions],
    environment: Mapping[str, str],
    executor: Any | None = None,
) -> dict[str, tuple[Any, JobSpec]]:
    """Submit every job of ``plan`` (in its order: what a job needs has an id already);
    ``options`` per pipeline (a job's ``pipeline``). Returns submitit's job and the spec per job."""
    executor = slurm_executor(folder) if executor is None else executor
    submitted: dict[str, tuple[Any, JobSpec]] = {}
    for job in plan.jobs:
        chosen = options[job.pipeline]
        threads = {"OMP_NUM_THREADS": str(chosen.cpus_per_job)} if chosen.cpus_per_job else {}
        spec = job_spec(job, root, folder, dict(environment) | threads)
        Path(spec.record).unlink(missing_ok=True)
        executor.update_parameters(**chosen.parameters(job, [submitted[need][0].job_id for need in job.needs]))
        submitted[job.name] = (executor.submit(run_job, spec), spec)
        print(f"lipbench launch: {job.name}: Slurm job {submitted[job.name][0].job_id}", flush=True)
    return submitted


def wait_for_jobs(
    plan: Plan, submitted: Mapping[str, tuple[Any, JobSpec]], commit: Callable[[Job], None], poll_s: float = 10.0
) -> list[JobRecord]:
    """Wait for the submitted jobs; commit each as it succeeds (``commit(job)``); a failed job's
    dependants are recorded as not run (Slurm cancels them). Records in plan order."""
    records: dict[str, JobRecord] = {}
    while len(records) < len(plan):
        for job in plan.jobs:
            if job.name in records:
                continue
            handle, spec = submitted[job.name]
            if not handle.done():
                continue
            record = finished_record(spec, _output(handle))
            if record.state == "succeeded":
                try:
                    commit(job)
                except Exception as error:
                    record = replace(record, state="failed", note=f"DVC commit failed: {error}")
            records[job.name] = record
            took = "" if record.seconds is None else f" after {record.seconds:.1f} s"
            print(f"lipbench launch: {job.name}: {record.state}{took}", flush=True)
            if record.state != "succeeded":
                for name in plan.dependants([job.name]):
                    if name not in records:
                        _cancel(submitted[name][0])
                        note = f"needs {job.name} ({record.state}); cancelled"
                        records[name] = JobRecord(name, "not run", plan.job(name).commands, note=note)
        if len(records) < len(plan):
            time.sleep(poll_s)
    return [records[job.name] for job in plan.jobs]


def _cancel(handle: Any) -> None:
    """``scancel`` a job that must not run (Slurm cancels those after a failed job by itself;
    not those after a stage whose commit failed)."""
    with contextlib.suppress(Exception):
        handle.cancel(check=False)


def _output(handle: Any) -> str | None:
    try:
        return handle.stdout()
    except Exception:
        return None
