"""Run pipeline stages on a machine that has PyTorch but no internet and no DVC (an
air-gapped GPU host), then record the results here as if `dvc repro` had produced them.

    # here (a checkout with .venv; the mirror holds the datasets' archives):
    LIPBENCH_DATA_MIRROR=../shared/data python tools/offline_bundle.py make pipelines/mnist/dvc.yaml
    # copy the checkout, .carry/ included, to the host; there, with its own python3 + torch:
    python3 tools/offline_bundle.py run --jobs 4 --out /some/folder
    # bring /some/folder back; here:
    python tools/offline_bundle.py import /some/folder

`make` writes .carry/: site/ (the pure-Python packages lipbench needs that a plain PyTorch
install lacks, unpacked, at the versions of requirements.lock), data/ (a copy of the
mirror), bin/lipbench and plan.json (the stage commands of the targets in DVC's order, as
`dvc repro --dry --force` lists them, the report stage left out: it runs here). `run`
(standard library only) runs the plan, the training stages --jobs at a time, logs each
stage and its wall time, and writes the outputs (models, evaluations, metrics) as a
gzipped tar in parts of at most 15 MiB. `import` unpacks them, prepares the datasets here
(deterministic: the same bytes) and records the stages that ran with `dvc commit`; then
`dvc repro` runs what is left (the report).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".carry"
PART_BYTES = 15 * 2**20
ARCHIVE = "outputs.tar.gz"
#: What a plain PyTorch install (torch, numpy, scipy, tqdm, PyYAML, safetensors, requests,
#: scikit-learn) lacks for training and evaluation; all pure Python.
PACKAGES = ("foolbox", "eagerpy", "GitPython", "gitdb", "smmap", "pyautoattack", "deel-torchlip")
#: Never unpacked: pyautoattack ships 45 MB of example checkpoints.
SKIPPED_MEMBERS = ("pyautoattack/examples/",)


def _locked_versions() -> dict[str, str]:
    versions = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split(";")[0].split("==")
            versions[name.strip().lower().replace("_", "-")] = version.strip()
    return versions


def _unpack_wheels(site: Path) -> None:
    versions = _locked_versions()
    missing = [name for name in PACKAGES if name.lower() not in versions]
    if missing:
        raise SystemExit(f"offline_bundle: {', '.join(missing)} not in requirements.lock; run tools/lock.sh")
    with tempfile.TemporaryDirectory() as wheels:
        pins = [f"{name}=={versions[name.lower()]}" for name in PACKAGES]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", wheels, *pins],
            check=True,
        )
        for wheel in sorted(Path(wheels).glob("*.whl")):
            if not wheel.name.endswith("-none-any.whl"):
                raise SystemExit(f"offline_bundle: {wheel.name} is not pure Python; the host would need its own build")
            with zipfile.ZipFile(wheel) as archive:
                members = [m for m in archive.namelist() if not m.startswith(SKIPPED_MEMBERS)]
                archive.extractall(site, members)


def _lipbench_metadata(site: Path) -> None:
    """A dist-info so that the run records lipbench's version (it runs from the checkout)."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    info = site / f"lipbench-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: lipbench\nVersion: {version}\n")


def _dvc() -> str:
    dvc = shutil.which("dvc") or str(ROOT / ".venv/bin/dvc")
    if not Path(dvc).is_file():
        raise SystemExit("offline_bundle: dvc not found; run `bash tools/bootstrap.sh` and `source .venv/bin/activate` first")
    return dvc


def parse_dry_run(listing: str) -> list[dict[str, str]]:
    """Stage names and commands from the output of `dvc repro --dry`, in its order."""
    stages: list[dict[str, str]] = []
    for line in listing.splitlines():
        if line.startswith("Running stage '"):
            stages.append({"name": line.split("'")[1]})
        elif line.startswith("> ") and stages and "cmd" not in stages[-1]:
            stages[-1]["cmd"] = line[2:]
    return [stage for stage in stages if "cmd" in stage]


def _kind(stage: dict[str, str]) -> str:
    """``train`` for ``pipelines/x/dvc.yaml:train@mnist-hkr-0``."""
    return stage["name"].split(":")[-1].split("@")[0]


def plan_stages(listings: list[list[dict[str, str]]]) -> list[dict[str, str]]:
    """The stages of several targets once each, without the report (it runs here): the
    profile check, all preparations, then all training (side by side on the host: each needs
    only its prepared data), then the evaluation stages in DVC's order."""
    stages: list[dict[str, str]] = []
    for listing in listings:
        stages += [stage for stage in listing if _kind(stage) != "report" and stage not in stages]
    return sorted(stages, key=lambda stage: {"validate": 0, "prepare": 1, "train": 2}.get(_kind(stage), 3))


def _dry_run(target: str) -> list[dict[str, str]]:
    """The stages `dvc repro --force TARGET` would run, in order: name and command."""
    listing = subprocess.run([_dvc(), "repro", "--dry", "--force", target], cwd=ROOT, capture_output=True, text=True, check=True)
    return parse_dry_run(listing.stdout)


def _profile_paths(target: str) -> list[str]:
    """The folders a profile's stages write (models, evaluation, metrics), from its params."""
    import yaml

    pipeline = (ROOT / target.split(":")[0]).resolve()
    folder = pipeline.parent if pipeline.suffix == ".yaml" else pipeline
    params = yaml.safe_load((folder / "params.yaml").read_text())
    return [params["paths"][key] for key in ("models", "evaluation", "metrics")]


def _git_commit() -> str:
    """The commit, as the metric files of a run here would record it."""
    sys.path.insert(0, str(ROOT))
    from lipbench.environment import git_commit

    commit = git_commit(str(ROOT / "lipbench"))
    if commit is None:
        raise SystemExit("offline_bundle: make runs in a git checkout (the bundle records its commit)")
    return commit


def make(targets: list[str], mirror: str | None) -> None:
    if mirror is not None and not Path(mirror).is_dir():
        raise SystemExit(f"offline_bundle: mirror {mirror} is not a folder; set LIPBENCH_DATA_MIRROR or pass --mirror")
    stages = plan_stages([_dry_run(target) for target in targets])
    if not stages:
        raise SystemExit(f"offline_bundle: dvc lists no stage for {' '.join(targets)}")
    outputs: list[str] = []
    for target in targets:
        outputs += [path for path in _profile_paths(target) if path not in outputs]
    shutil.rmtree(CARRY, ignore_errors=True)
    site = CARRY / "site"
    site.mkdir(parents=True)
    _unpack_wheels(site)
    _lipbench_metadata(site)
    if mirror is not None:
        shutil.copytree(mirror, CARRY / "data", ignore=shutil.ignore_patterns("README*", "SHA256SUMS"))
    plan = {"targets": targets, "git_commit": _git_commit(), "stages": stages, "outputs": outputs}
    (CARRY / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    size = sum(path.stat().st_size for path in CARRY.rglob("*") if path.is_file())
    print(f"offline_bundle: .carry/ holds {len(stages)} stages and {size / 2**20:.1f} MiB")


def _log_path(stage: dict[str, str]) -> Path:
    return CARRY / "logs" / (stage["name"].replace("/", "_").replace(":", "_") + ".log")


class _Running:
    """One stage's process (its own process group, so that a deadline stops all of it)."""

    def __init__(self, stage: dict[str, str], environment: dict[str, str]) -> None:
        self.stage, self.started = stage, time.perf_counter()
        self.log = open(_log_path(stage), "w")  # closed in finish()
        self.process = subprocess.Popen(
            stage["cmd"], shell=True, cwd=ROOT, env=environment, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        """SIGTERM to the stage's processes, SIGKILL 30 s later (training keeps its last epoch checkpoint)."""
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(wait)

    def finish(self, interrupted: bool = False) -> dict[str, object]:
        self.log.close()
        seconds = round(time.perf_counter() - self.started, 2)
        status = None if interrupted else self.process.returncode
        record = {"name": self.stage["name"], "seconds": seconds, "exit_status": status, "log": _log_path(self.stage).name}
        state = "interrupted at the deadline" if interrupted else f"exit {status}"
        print(f"offline_bundle: {self.stage['name']}: {state} after {seconds} s", flush=True)
        return record


def _write_parts(paths: list[Path], out: Path) -> list[str]:
    """A gzipped tar of ``paths`` (relative to the checkout) split into parts."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{ARCHIVE}.part*"):  # parts of an earlier, larger run would corrupt this one
        stale.unlink()
    archive = out / ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        for path in paths:
            if path.exists():
                tar.add(path, arcname=str(path.relative_to(ROOT)))
    names, data = [], archive.read_bytes()
    archive.unlink()
    for index, start in enumerate(range(0, len(data), PART_BYTES)):
        part = out / f"{ARCHIVE}.part{index:02d}"
        part.write_bytes(data[start : start + PART_BYTES])
        names.append(part.name)
    return names


def _environment(plan: dict) -> dict[str, str]:
    """Stage processes find lipbench (the checkout), its bundled dependencies and the mirror."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(CARRY / "site"), str(ROOT), environment.get("PYTHONPATH", "")])
    environment["PATH"] = os.pathsep.join([str(CARRY / "bin"), environment["PATH"]])
    environment["LIPBENCH_GIT_COMMIT"] = plan["git_commit"]
    environment["PYTHONUNBUFFERED"] = "1"
    if (CARRY / "data").is_dir():
        environment["LIPBENCH_DATA_MIRROR"] = str(CARRY / "data")
    shim = CARRY / "bin" / "lipbench"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lipbench.cli.main "$@"\n')
    shim.chmod(0o755)
    return environment


def run(jobs: int, out: Path, deadline: float | None = None, resume: Path | None = None) -> int:
    """Run the plan; training stages ``jobs`` at a time, every other stage alone. After
    ``deadline`` seconds the running stages are stopped and what is done is archived; a
    later ``run --resume`` with that archive goes on from there (finished stages are not
    rerun, training resumes from its last epoch checkpoint; the data is prepared again)."""
    plan = json.loads((CARRY / "plan.json").read_text())
    logs = CARRY / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    records: list[dict[str, object]] = []
    previous_seconds = 0.0
    if resume is not None:
        earlier = _unpack(resume)
        if earlier["plan"]["stages"] != plan["stages"]:
            raise SystemExit(f"offline_bundle: {resume} holds a run of another plan; make a new bundle or resume the right run")
        # Finished stages are not rerun, except the preparations: prepared data is not
        # archived (the datasets travel as the mirror) and preparing again is cheap.
        records = [record for record in earlier["stages"] if record["exit_status"] == 0 and _kind(record) != "prepare"]
        previous_seconds = float(earlier["total_seconds"])
    logs.mkdir(exist_ok=True)
    environment = _environment(plan)
    threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))} if jobs > 1 else {}
    done = {record["name"] for record in records}
    pending = [stage for stage in plan["stages"] if stage["name"] not in done]
    running: list[_Running] = []
    started, failed, out_of_time = time.perf_counter(), False, False
    while (pending and not failed and not out_of_time) or running:
        out_of_time = deadline is not None and time.perf_counter() - started > deadline
        if out_of_time:
            for stage in running:
                stage.stop()
            records += [stage.finish(interrupted=True) for stage in running]
            break
        # Training stages need only their prepared data: they run side by side, each on
        # cpu_count / jobs threads (more would fight over the cores; a thread count other
        # than a lone run's changes CPU float rounding a little: metric files record it).
        while pending and not failed and len(running) < max(1, jobs):
            alongside = all(_kind(stage.stage) == "train" for stage in running) and _kind(pending[0]) == "train"
            if running and not alongside:
                break
            stage_environment = environment | (threads if _kind(pending[0]) == "train" else {})
            running.append(_Running(pending.pop(0), stage_environment))
        time.sleep(0.2)
        for stage in [stage for stage in running if stage.process.poll() is not None]:
            running.remove(stage)
            records.append(stage.finish())
            failed = failed or stage.process.returncode != 0
    position = {stage["name"]: index for index, stage in enumerate(plan["stages"])}
    records.sort(key=lambda record: position[record["name"]])  # plan order, whatever order they finished in
    succeeded = {record["name"] for record in records if record["exit_status"] == 0}
    summary = {
        "plan": plan,
        "stages": records,
        "total_seconds": round(previous_seconds + time.perf_counter() - started, 2),
        "jobs": jobs,
        "host": {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()},
        "complete": all(stage["name"] in succeeded for stage in plan["stages"]),
    }
    (logs / "run.json").write_text(json.dumps(summary, indent=1) + "\n")
    parts = _write_parts([ROOT / path for path in plan["outputs"]] + [logs], out)
    print(f"offline_bundle: {summary['total_seconds']} s in all; wrote {', '.join(parts)} to {out}")
    for record in records:
        if record["exit_status"] not in (0, None):
            print(f"offline_bundle: {record['name']} failed; its log:\n" + (logs / str(record["log"])).read_text()[-4000:])
    if not summary["complete"] and not failed:
        print(f"offline_bundle: stopped at the deadline; go on with `run --resume {out}` (after copying it back)")
    return 0 if summary["complete"] else 1


def _safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for member in members:
        if member.name.startswith(("/", "..")) or ".." in Path(member.name).parts or not (member.isfile() or member.isdir()):
            raise SystemExit(f"offline_bundle: refusing archive member {member.name!r}")
    return members


def _unpack(folder: Path, require_complete: bool = False) -> dict:
    """Unpack a run's archive parts in ``folder`` into the checkout and return its run.json.
    Members are checked first (nothing outside the checkout, files and folders only), and
    with ``require_complete`` an incomplete run is refused before anything is written."""
    parts = sorted(folder.glob(f"{ARCHIVE}.part*"))
    if not parts:
        raise SystemExit(f"offline_bundle: no {ARCHIVE}.part* files in {folder}")
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / ARCHIVE
        archive.write_bytes(b"".join(part.read_bytes() for part in parts))
        with tarfile.open(archive) as tar:
            members = _safe_members(tar)
            try:
                summary = json.loads(tar.extractfile(".carry/logs/run.json").read())
            except KeyError:
                raise SystemExit(f"offline_bundle: {folder} holds no .carry/logs/run.json; not a run's archive") from None
            if require_complete and not summary.get("complete"):
                raise SystemExit(
                    "offline_bundle: the run did not complete (see .carry/logs in the archive; `run --resume` goes on); "
                    "nothing imported"
                )
            tar.extractall(ROOT, members, filter="data")
    return summary


def import_outputs(folder: Path) -> None:
    summary = _unpack(folder, require_complete=True)
    dvc = _dvc()
    prepares = [stage["name"] for stage in summary["plan"]["stages"] if _kind(stage) == "prepare"]
    if prepares:
        subprocess.run([dvc, "repro", "--single-item", *prepares], cwd=ROOT, check=True)
    # Exactly the stages that ran there (the report did not: `dvc repro` runs it here).
    subprocess.run([dvc, "commit", "--force", *(stage["name"] for stage in summary["plan"]["stages"])], cwd=ROOT, check=True)
    print("offline_bundle: imported (stage times: .carry/logs/run.json); `dvc repro <target>` runs what is left (the report)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make_parser = commands.add_parser("make", help="write .carry/ for the targets (here)")
    make_parser.add_argument("targets", nargs="+", help="dvc repro targets, e.g. pipelines/mnist/dvc.yaml")
    make_parser.add_argument("--mirror", default=os.environ.get("LIPBENCH_DATA_MIRROR") or None, help="dataset mirror to copy")
    run_parser = commands.add_parser("run", help="run .carry/plan.json (on the host)")
    run_parser.add_argument("--jobs", type=int, default=1, help="training stages run side by side")
    run_parser.add_argument("--out", type=Path, default=CARRY / "out", help="folder for the archive parts")
    run_parser.add_argument("--deadline", type=float, default=None, help="seconds after which to stop and archive")
    run_parser.add_argument("--resume", type=Path, default=None, help="archive parts of a run stopped at its deadline")
    import_parser = commands.add_parser("import", help="record a run's archive parts (here)")
    import_parser.add_argument("folder", type=Path)
    arguments = parser.parse_args(argv)
    if arguments.command == "make":
        make(arguments.targets, arguments.mirror)
        return 0
    if arguments.command == "run":
        if arguments.jobs < 1:
            parser.error(f"--jobs must be an integer >= 1, got {arguments.jobs}")
        return run(arguments.jobs, arguments.out, arguments.deadline, arguments.resume)
    import_outputs(arguments.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
