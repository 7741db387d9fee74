"""The offline bundle: run a plan on a host that has PyTorch but no internet and no DVC (an
air-gapped GPU host), then record the results here as if ``dvc repro`` had produced them.

- :func:`make` (here, with DVC): the plan of the targets from DVC's stage graph (every stage
  they need, the report left out: it runs here; train stages fanned out into a job per
  model, as for ``lipbench launch``) and ``.carry/``: ``site/`` (the pure-Python
  packages lipbench and the runner need that a plain PyTorch install lacks, at the versions
  of requirements.lock), ``data/`` (a copy of the dataset mirror) and ``plan.json``.
- :func:`run` (on the host; standard library and the carried submitit): the plan through
  the launcher's runner, ``jobs`` at a time; optionally stopped at a deadline and resumed
  later; the outputs, logs and records archived in one file (or parts of a given size).
- :func:`import_outputs` (here): unpack, prepare the datasets again (deterministic: the
  same bytes) and commit every stage that ran there (a train stage's parts need nothing:
  their models are in the stage's output); ``dvc repro`` then runs the report.

Every function takes the checkout's root; ``tools/offline_bundle.py`` is the command line.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lipbench.io import write_json_atomic
from lipbench.launch.archive import open_archive, read_member_json, safe_members, write_archive
from lipbench.launch.plan import Job, LaunchError, Plan, stage_kind
from lipbench.launch.runner import DONE_STATES, JobRecord, local_environment, log_tail, run_local

__all__ = ["CARRY", "PACKAGES", "bundle_plan", "import_outputs", "main", "make", "run"]

CARRY = ".carry"
#: The runner's folder in the checkout (logs, records, run.json travel in the archive).
LAUNCH = f"{CARRY}/launch"
RUN_RECORD = f"{LAUNCH}/run.json"
#: What a plain PyTorch install (torch, numpy, scipy, tqdm, PyYAML, safetensors, requests,
#: scikit-learn, typing_extensions) lacks for training, evaluation and the runner; all pure Python.
PACKAGES = ("foolbox", "eagerpy", "GitPython", "gitdb", "smmap", "pyautoattack", "deel-torchlip", "submitit", "cloudpickle")
#: Never unpacked: pyautoattack ships 45 MB of example checkpoints.
SKIPPED_MEMBERS = ("pyautoattack/examples/",)


def _locked_versions(root: Path) -> dict[str, str]:
    versions = {}
    for line in (root / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split(";")[0].split("==")
            versions[name.strip().lower().replace("_", "-")] = version.strip()
    return versions


def _unpack_wheels(root: Path, site: Path) -> None:
    versions = _locked_versions(root)
    missing = [name for name in PACKAGES if name.lower() not in versions]
    if missing:
        raise LaunchError(f"{', '.join(missing)} not in requirements.lock; run tools/lock.sh")
    with tempfile.TemporaryDirectory() as wheels:
        pins = [f"{name}=={versions[name.lower()]}" for name in PACKAGES]
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", wheels, *pins]
        subprocess.run(command, check=True)
        for wheel in sorted(Path(wheels).glob("*.whl")):
            if not wheel.name.endswith("-none-any.whl"):
                raise LaunchError(f"{wheel.name} is not pure Python; the host would need its own build")
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site, [m for m in archive.namelist() if not m.startswith(SKIPPED_MEMBERS)])


def _lipbench_metadata(root: Path, site: Path) -> None:
    """A dist-info so that the run records lipbench's version (it runs from the checkout)."""
    import tomllib

    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    info = site / f"lipbench-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: lipbench\nVersion: {version}\n")


def _outputs(root: Path, plan: Plan) -> list[str]:
    """What the host's run brings back: for each profile of the plan, its models (weights and
    training checkpoints, so that a resumed run goes on from them), evaluations, metric files
    and the validate stage's marker; not the prepared data (it is prepared again here)."""
    import yaml

    from lipbench.runs import Layout

    outputs: list[str] = []
    for pipeline in dict.fromkeys(job.pipeline for job in plan.jobs):
        params = yaml.safe_load((root / Path(pipeline).parent / "params.yaml").read_text())
        layout = Layout(params["paths"])
        paths = [layout.paths["models"], layout.paths["evaluation"], layout.paths["metrics"], str(layout.validated())]
        outputs += [Path(path).as_posix() for path in paths if Path(path).as_posix() not in outputs]
    return outputs


def bundle_plan(root: Path, targets: Sequence[str], git_commit: str) -> Plan:
    """The plan the host runs: every stage ``targets`` need, up to date here or not (the host
    starts from nothing), the report left out (it runs here); it records the commit and the
    outputs to bring back."""
    from lipbench.launch.stages import DvcStages

    plan = DvcStages(root, force=True).plan(targets, exclude_kinds=("report",))
    if not plan.jobs:
        raise LaunchError(f"no stage to run for {' '.join(targets)}")
    return Plan(plan.jobs, tuple(targets), plan.up_to_date, {"git_commit": git_commit, "outputs": _outputs(root, plan)})


def make(root: Path, targets: Sequence[str], mirror: Path | None) -> Plan:
    """Write ``root/.carry`` for ``targets``: the plan, the packages, the mirror."""
    from lipbench.environment import git_commit

    if mirror is not None and not mirror.is_dir():
        raise LaunchError(f"mirror {mirror} is not a folder; set LIPBENCH_DATA_MIRROR or pass --mirror")
    commit = git_commit(str(root / "lipbench"))
    if commit is None:
        raise LaunchError("make runs in a git checkout (the bundle records its commit)")
    plan = bundle_plan(root, targets, commit)
    carry = root / CARRY
    shutil.rmtree(carry, ignore_errors=True)
    _unpack_wheels(root, carry / "site")
    _lipbench_metadata(root, carry / "site")
    if mirror is not None:
        shutil.copytree(mirror, carry / "data", ignore=shutil.ignore_patterns("README*", "SHA256SUMS"))
    plan.write(carry / "plan.json")
    size = sum(path.stat().st_size for path in carry.rglob("*") if path.is_file())
    print(f"offline_bundle: {CARRY}/ holds {len(plan)} jobs and {size / 2**20:.1f} MiB")
    return plan


def host_environment(root: Path, plan: Plan, jobs: int) -> tuple[dict[str, str], tuple[str, ...]]:
    """The jobs' commands find lipbench (the checkout), the carried packages, the mirror and a
    ``lipbench`` command; metric files record the bundle's commit."""
    carry = root.resolve() / CARRY
    shim = carry / "bin" / "lipbench"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lipbench.cli.main "$@"\n')
    shim.chmod(0o755)
    environment, unset = local_environment(jobs)
    environment |= {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(carry / "site"), str(root.resolve()), os.environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join([str(shim.parent), os.environ.get("PATH", "")]),
        "LIPBENCH_GIT_COMMIT": str(plan.extra.get("git_commit", "")),
    }
    if (carry / "data").is_dir():
        environment["LIPBENCH_DATA_MIRROR"] = str(carry / "data")
    return environment, unset


def _unpack(root: Path, folder: Path, require_complete: bool = False) -> dict[str, Any]:
    """Unpack a run's archive in ``folder`` into ``root`` and return its run record. Members
    are checked first (files and folders inside the checkout only); with ``require_complete``
    an incomplete run is refused before anything is written."""
    with open_archive(folder) as tar:
        members = safe_members(tar)
        summary = read_member_json(tar, RUN_RECORD, folder)
        if require_complete and not summary.get("complete"):
            raise LaunchError(
                f"the run in {folder} did not complete (see {LAUNCH}/logs in the archive; "
                "`run --resume` goes on); nothing imported"
            )
        tar.extractall(root, members, filter="data")
    return summary


def _resumed(root: Path, plan: Plan, resume: Path | None) -> tuple[list[JobRecord], float]:
    """The finished jobs of an earlier run of this plan (its archive unpacked into ``root``)
    and its seconds. Preparations run again: prepared data is not archived."""
    if resume is None:
        return [], 0.0
    earlier = _unpack(root, resume)
    if earlier["plan"]["jobs"] != plan.to_json()["jobs"]:
        raise LaunchError(f"{resume} holds a run of another plan; make a new bundle or resume the right run")
    records = [JobRecord.from_json(record) for record in earlier["records"]]
    return [r for r in records if r.state == "succeeded" and stage_kind(r.name) != "prepare"], float(earlier["total_seconds"])


def run(
    root: Path,
    jobs: int = 1,
    out: Path | None = None,
    deadline: float | None = None,
    resume: Path | None = None,
    part_bytes: int | None = None,
) -> int:
    """Run ``root/.carry/plan.json`` (on the host); archive the outputs, logs and records in
    ``out``. After ``deadline`` seconds the running jobs are stopped and what is done is
    archived; ``resume`` (that archive) goes on from there, on a fresh copy too (finished
    jobs are not rerun, training resumes from its last epoch checkpoint)."""
    plan = Plan.read(root / CARRY / "plan.json")
    out = root / CARRY / "out" if out is None else out
    shutil.rmtree(root / LAUNCH, ignore_errors=True)
    previous, previous_seconds = _resumed(root, plan, resume)
    environment, unset = host_environment(root, plan, jobs)
    started = time.perf_counter()
    remaining = plan.without(record.name for record in previous)
    records = run_local(remaining, root, root / LAUNCH, jobs=jobs, environment=environment, unset=unset, deadline=deadline)
    merged = {record.name: record for record in [*previous, *records]}
    records = [merged[job.name] for job in plan.jobs]
    summary = {
        "plan": plan.to_json(),
        "records": [record.to_json() for record in records],
        "total_seconds": round(previous_seconds + time.perf_counter() - started, 2),
        "jobs": jobs,
        "host": {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()},
        "complete": all(record.state == "succeeded" for record in records),
    }
    write_json_atomic(root / RUN_RECORD, summary)
    carried = [f"{LAUNCH}/logs", f"{LAUNCH}/records", RUN_RECORD]
    names = write_archive(root, [*plan.extra.get("outputs", []), *carried], out, part_bytes)
    print(f"offline_bundle: {summary['total_seconds']} s in all; wrote {', '.join(names)} to {out}")
    for record in records:
        if record.state == "failed":
            print(f"offline_bundle: {record.name} failed; the end of its log:\n{log_tail(record.log, 60)}")
    if not summary["complete"] and all(record.state != "failed" for record in records):
        print(f"offline_bundle: stopped before the end; go on with `run --resume {out}` (after copying it back)")
    return 0 if summary["complete"] else 1


class _ImportHooks:
    """Import: preparations run here (and are committed); every other stage ran on the host
    and is only committed, after the stages it needs (a part: nothing to commit)."""

    def __init__(self, root: Path) -> None:
        from lipbench.launch.stages import DvcStages

        self.stages = DvcStages(root)

    def settle(self, job: Job) -> str:
        if job.kind == "prepare":
            return self.stages.settle(job)
        self.stages.commit(job)
        return "imported"

    def commit(self, job: Job) -> None:
        self.stages.commit(job)


def import_outputs(root: Path, folder: Path) -> list[JobRecord]:
    """Unpack a complete run's archive into ``root``, prepare the datasets and commit every
    stage of its plan (``dvc status`` then shows them up to date)."""
    from lipbench.launch.launcher import job_environment

    plan = Plan.from_json(_unpack(root, folder, require_complete=True)["plan"])
    environment, unset = job_environment("local", 1)
    records = run_local(plan, root, root / CARRY / "import", environment=environment, unset=unset, hooks=_ImportHooks(root))
    failed = [record for record in records if record.state not in DONE_STATES]
    if failed:
        details = "\n".join(f"{r.name}: {r.state} {r.note}\n{log_tail(r.log)}" for r in failed)
        raise LaunchError(f"import stopped:\n{details}")
    print("offline_bundle: imported; `dvc repro <target>` runs what is left (the report)")
    return records


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lipbench.launch.bundle --root ROOT {make,run,import} ...`` (tools/offline_bundle.py)."""
    parser = argparse.ArgumentParser(
        prog="offline_bundle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=True, help="the checkout")
    commands = parser.add_subparsers(dest="command", required=True)
    make_parser = commands.add_parser("make", help="write .carry/ for the targets (here)")
    make_parser.add_argument("targets", nargs="+", help="DVC targets, e.g. pipelines/mnist/dvc.yaml")
    make_parser.add_argument("--mirror", type=Path, default=os.environ.get("LIPBENCH_DATA_MIRROR") or None)
    run_parser = commands.add_parser("run", help="run .carry/plan.json (on the host)")
    run_parser.add_argument("--jobs", type=int, default=1, help="jobs at a time")
    run_parser.add_argument("--out", type=Path, default=None, help="folder for the archive (default .carry/out)")
    run_parser.add_argument("--deadline", type=float, default=None, help="seconds after which to stop and archive")
    run_parser.add_argument("--resume", type=Path, default=None, help="the archive of a run stopped before its end")
    run_parser.add_argument("--part-mib", type=float, default=None, help="split the archive in parts of this size (MiB)")
    import_parser = commands.add_parser("import", help="record a run's archive (here)")
    import_parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        if args.command == "make":
            make(root, args.targets, args.mirror)
            return 0
        if args.command == "run":
            if args.jobs < 1:
                raise LaunchError(f"--jobs must be at least 1, got {args.jobs}")
            part_bytes = None if args.part_mib is None else max(1, int(args.part_mib * 2**20))
            return run(root, args.jobs, args.out, args.deadline, args.resume, part_bytes)
        import_outputs(root, args.folder)
        return 0
    except (LaunchError, ValueError) as error:
        print(f"offline_bundle: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
