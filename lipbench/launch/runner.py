"""Run a plan's jobs as processes through submitit's LocalExecutor, ``jobs`` at a time.

Standard library and submitit only (the offline host runs this without DVC). A job starts
once every job it needs has succeeded; a failed job stops its dependants. Each job's
commands run in their own process group with their output in ``<folder>/logs/<job>.log``;
:func:`run_job` (the function submitit runs in the job's process) records the command,
exit status and wall time in ``<folder>/records/<job>.json``. The DVC side (skip a stage
that is up to date, restore it from the run-cache, commit it after success) comes in
through :class:`Hooks`; without hooks every job of the plan runs (the offline host).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from lipbench.io import write_json_atomic
from lipbench.launch.plan import Job, Plan

__all__ = [
    "DONE_STATES",
    "Hooks",
    "JobFailedError",
    "JobRecord",
    "JobSpec",
    "job_spec",
    "local_environment",
    "log_tail",
    "run_job",
    "run_local",
]

#: States after which a job's dependants may start (``imported``: committed from an offline run;
#: ``skipped``: a part of a stage that will not run, see :meth:`~lipbench.launch.stages.DvcStages.settle`).
DONE_STATES = frozenset({"succeeded", "up to date", "restored", "imported", "skipped"})
#: A year: submitit's local jobs otherwise stop after 2 minutes.
_LOCAL_TIMEOUT_MIN = 60 * 24 * 365
#: Seconds between SIGTERM and SIGKILL when a running job is stopped (training keeps its checkpoint).
STOP_GRACE_S = 30.0


class JobFailedError(RuntimeError):
    """Raised in the job's process when a command fails: submitit and Slurm then see a failed
    job (Slurm's ``afterok`` dependants do not start)."""


@dataclass(frozen=True)
class JobRecord:
    """What happened to one job: ``state`` is succeeded, failed, interrupted, not run,
    up to date, restored (from DVC's run-cache), imported or skipped (see ``DONE_STATES``)."""

    name: str
    state: str
    commands: tuple[str, ...] = ()
    exit_status: int | None = None
    seconds: float | None = None
    log: str | None = None
    note: str = ""
    host: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"commands": list(self.commands)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobRecord:
        fields = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        return cls(**(fields | {"commands": tuple(data.get("commands", ()))}))


@dataclass(frozen=True)
class JobSpec:
    """Everything the job's process needs (pickled by submitit): absolute paths only."""

    name: str
    commands: tuple[str, ...]
    cwd: str
    outs: tuple[str, ...]
    log: str
    record: str
    environment: Mapping[str, str]
    unset: tuple[str, ...] = ()


def _file_name(name: str) -> str:
    """``pipelines/paper/dvc.yaml:train@mnist/hkr/seed0`` -> ``pipelines_paper_dvc.yaml_train@mnist_hkr_seed0``."""
    return re.sub(r"[^A-Za-z0-9@._-]", "_", name)


def job_spec(job: Job, root: Path, folder: Path, environment: Mapping[str, str], unset: Sequence[str] = ()) -> JobSpec:
    """The job's process's view of ``job``: paths made absolute under ``root`` (commands,
    outputs) and ``folder`` (log and record)."""
    root, folder = root.resolve(), folder.resolve()
    return JobSpec(
        name=job.name,
        commands=job.commands,
        cwd=str(root / job.wdir),
        outs=tuple(str(root / out) for out in job.outs),
        log=str(folder / "logs" / f"{_file_name(job.name)}.log"),
        record=str(folder / "records" / f"{_file_name(job.name)}.json"),
        environment=dict(environment) | {"DVC_ROOT": str(root), "DVC_STAGE": job.name},
        unset=tuple(unset),
    )


def _remove(path: Path) -> None:
    """DVC removes a stage's (non-persistent) outputs before it runs the stage; so does the job."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def run_job(spec: JobSpec) -> dict[str, Any]:
    """Run one job's commands (in the job's process; submitit calls this). Writes the record;
    raises :class:`JobFailedError` when a command fails."""
    for out in spec.outs:
        _remove(Path(out))
    environment = dict(os.environ) | dict(spec.environment)
    for name in spec.unset:
        environment.pop(name, None)
    Path(spec.log).parent.mkdir(parents=True, exist_ok=True)
    pid_file = Path(spec.record).with_suffix(".pid")
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    started, status = time.perf_counter(), 0
    with open(spec.log, "w") as log:
        for command in spec.commands:
            log.write(f"> {command}\n")
            log.flush()
            process = subprocess.Popen(
                command, shell=True, cwd=spec.cwd, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            pid_file.write_text(str(process.pid))
            try:
                status = process.wait()
            finally:
                if process.poll() is None:  # the job itself was interrupted: so is its command
                    _stop_group(process.pid, grace=5.0)
            if status != 0:
                break
    pid_file.unlink(missing_ok=True)
    seconds = round(time.perf_counter() - started, 2)
    state = "succeeded" if status == 0 else "failed"
    record = JobRecord(spec.name, state, spec.commands, status, seconds, spec.log, host=platform.node())
    write_json_atomic(spec.record, record.to_json())
    if status != 0:
        raise JobFailedError(f"{spec.name}: exit status {status}; log {spec.log}")
    return record.to_json()


def _stop_group(pid: int, grace: float = STOP_GRACE_S) -> None:
    """Stop one command's process group (see :func:`_stop_groups`)."""
    _stop_groups([pid], grace)


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _stop_groups(pids: Sequence[int], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to commands' process groups, SIGKILL to those still there ``grace`` seconds later."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def log_tail(path: str | None, lines: int = 30) -> str:
    """The last ``lines`` lines of a log ("" when there is none)."""
    if not path or not Path(path).is_file():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


class Hooks(Protocol):
    """The DVC side of a job (see :class:`lipbench.launch.stages.DvcStages`)."""

    def settle(self, job: Job) -> str:
        """Just before ``job`` would start: ``run``, or a state of ``DONE_STATES`` (it does not run)."""
        ...

    def commit(self, job: Job) -> None:
        """After ``job`` succeeded: record its outputs (``dvc commit``)."""
        ...


def finished_record(spec: JobSpec, stderr: str | None) -> JobRecord:
    """The record a finished job's process wrote, or a failed record with its process's
    error output when it wrote none (it could not start the job, or was killed)."""
    path = Path(spec.record)
    if path.is_file():
        return JobRecord.from_json(json.loads(path.read_text()))
    log = Path(spec.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        handle.write(stderr or "(the job's process ended without a record and without error output)\n")
    return JobRecord(spec.name, "failed", spec.commands, None, None, spec.log, note="the job's process ended without a record")


class _Schedule:
    """Which jobs are done, running and waiting; starts the ready ones."""

    def __init__(self, plan: Plan, hooks: Hooks | None) -> None:
        self.plan, self.hooks = plan, hooks
        self.records: dict[str, JobRecord] = {}
        self.running: dict[str, tuple[Any, JobSpec]] = {}

    def busy(self) -> bool:
        return len(self.records) < len(self.plan) or bool(self.running)

    def ready(self) -> list[Job]:
        waiting = [job for job in self.plan.jobs if job.name not in self.records and job.name not in self.running]
        return [job for job in waiting if all(self._state(need) in DONE_STATES for need in job.needs)]

    def _state(self, name: str) -> str | None:
        record = self.records.get(name)
        return None if record is None else record.state

    def record(self, record: JobRecord) -> None:
        self.records[record.name] = record
        took = "" if record.seconds is None else f" after {record.seconds:.1f} s"
        print(f"lipbench launch: {record.name}: {record.state}{took}", flush=True)
        if record.state not in DONE_STATES:
            for name in self.plan.dependants([record.name]):
                if name not in self.records:
                    note = f"needs {record.name} ({record.state})"
                    self.records[name] = JobRecord(name, "not run", self.plan.job(name).commands, note=note)

    def settle(self, job: Job) -> bool:
        """True when ``job`` must run; otherwise it is recorded (up to date, restored, failed)."""
        if self.hooks is None:
            return True
        try:
            state = self.hooks.settle(job)
        except Exception as error:  # a DVC error about this stage: report it, go on with the others
            self.record(JobRecord(job.name, "failed", job.commands, note=f"DVC: {error}"))
            return False
        if state != "run":
            self.record(JobRecord(job.name, state, job.commands))
        return state == "run"

    def finish(self, name: str, record: JobRecord) -> None:
        """A job ended: commit it when it succeeded (a commit error fails it)."""
        del self.running[name]
        if record.state == "succeeded" and self.hooks is not None:
            try:
                self.hooks.commit(self.plan.job(name))
            except Exception as error:
                record = JobRecord(**(asdict(record) | {"state": "failed", "note": f"DVC commit failed: {error}"}))
        self.record(record)

    def stop(self, why: str) -> None:
        """Stop the running jobs (their commands' process groups, then their processes) and
        give up the waiting ones."""
        pid_files = [Path(spec.record).with_suffix(".pid") for _, spec in self.running.values()]
        pids = [int(text) for text in (path.read_text().strip() for path in pid_files if path.is_file()) if text.isdigit()]
        _stop_groups(pids)
        for name, (submitted, spec) in list(self.running.items()):
            for _ in range(50):  # its process records the stopped command and ends
                if submitted.done():
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(Exception):
                    submitted.cancel(check=False)
            record = finished_record(spec, None) if Path(spec.record).is_file() else None
            if record is not None and record.state == "succeeded":  # it ended before it was stopped
                self.finish(name, record)
                continue
            del self.running[name]
            self.record(JobRecord(name, "interrupted", spec.commands, log=spec.log, note=why))
        for job in self.plan.jobs:
            self.records.setdefault(job.name, JobRecord(job.name, "not run", job.commands, note=why))

    def in_plan_order(self) -> list[JobRecord]:
        return [self.records[job.name] for job in self.plan.jobs]


def local_environment(jobs: int) -> tuple[dict[str, str], tuple[str, ...]]:
    """Variables set and unset for local jobs: with several at a time, each takes
    cpu_count / jobs threads (unless OMP_NUM_THREADS is set already); every job sees the GPUs
    this process sees (submitit's local executor would hide them) and takes one of them
    through lipbench's per-GPU lock files (lipbench/devices.py)."""
    environment: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        environment["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return environment, ("CUDA_VISIBLE_DEVICES",)
    return environment | {"CUDA_VISIBLE_DEVICES": visible}, ()


def local_executor(folder: Path) -> Any:
    """submitit's LocalExecutor writing under ``folder/submitit`` (no time limit, one task)."""
    import submitit

    executor = submitit.LocalExecutor(folder=str(folder / "submitit" / "%j"))
    executor.update_parameters(timeout_min=_LOCAL_TIMEOUT_MIN, stderr_to_stdout=True)
    return executor


def run_local(
    plan: Plan,
    root: Path,
    folder: Path,
    *,
    jobs: int = 1,
    environment: Mapping[str, str] | None = None,
    unset: Sequence[str] = (),
    hooks: Hooks | None = None,
    deadline: float | None = None,
    poll_s: float = 0.2,
) -> list[JobRecord]:
    """Run ``plan`` on this machine, at most ``jobs`` processes at a time, each job once the
    jobs it needs succeeded. After ``deadline`` seconds (or on Ctrl-C) the running jobs are
    stopped (interrupted) and the rest is not run. Returns a record per job, in plan order."""
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    executor, schedule, started = local_executor(folder), _Schedule(plan, hooks), time.monotonic()
    try:
        while schedule.busy():
            if deadline is not None and time.monotonic() - started > deadline:
                schedule.stop(f"stopped at the deadline ({deadline:g} s)")
                break
            for job in schedule.ready():
                if len(schedule.running) >= jobs:
                    break
                if schedule.settle(job):
                    spec = job_spec(job, root, folder, environment or {}, unset)
                    Path(spec.record).unlink(missing_ok=True)
                    schedule.running[job.name] = (executor.submit(run_job, spec), spec)
                    print(f"lipbench launch: {job.name}: started", flush=True)
            time.sleep(poll_s)
            for name, (submitted, spec) in list(schedule.running.items()):
                if submitted.done():
                    schedule.finish(name, finished_record(spec, _stderr(submitted)))
    except KeyboardInterrupt:
        schedule.stop("interrupted (Ctrl-C)")
    return schedule.in_plan_order()


def _stderr(submitted: Any) -> str | None:
    """A submitit job's own error output (where its process failed before or around the job)."""
    with contextlib.suppress(Exception):
        return submitted.stderr() or submitted.stdout()
    return None
