"""The DVC side of a launch: the plan of some targets from DVC's stage graph, and what
``dvc repro`` does around each stage's command (skip, run-cache, commit).

``dvc repro`` walks the targets' stages upstream first; a stage runs when it changed (its
command, dependencies or outputs differ from ``dvc.lock``) or when a stage it depends on
ran. Just before running it, DVC removes its outputs and tries its run-cache; after the
command it saves the stage (dependency and output hashes, the run-cache entry), commits the
outputs to the cache and writes the stage's ``dvc.lock`` entry. :class:`DvcStages` does the
same steps with DVC's own functions, one stage at a time, around jobs that run elsewhere.

A train stage that must run is fanned out (:func:`fan_out`): one job per model of its
dataset (``lipbench train ... --model M --seed S``, which trains the model and keeps it for
reuse) before the stage's own job, whose command then finds every model kept and only
copies them into its output. The parts are no DVC stages: they run unless their stage would
not (up to date, or in the run-cache) and are never committed; their stage is.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lipbench.launch.plan import Job, LaunchError, Plan

__all__ = ["DvcStages", "absolute_target", "fan_out", "stage_name", "train_parts"]

#: How long a job's settle or commit waits for another DVC process's lock (seconds).
COMMIT_WAIT_S = 600.0
#: Options of a train command that already make it one model's: such a stage is not fanned out.
ONE_MODEL_OPTIONS = ("--model", "--seed", "--out", "--metrics", "--device")


def absolute_target(target: str, base: Path) -> str:
    """A DVC target (``dvc.yaml``, ``dir/dvc.yaml:stage``, ``stage``) with its file made
    absolute under ``base``: DVC resolves targets from the current folder, the launch from
    the checkout it is given."""
    if ":" in target:
        path, name = target.rsplit(":", 1)
    elif target.endswith(("dvc.yaml", ".dvc")) or (base / target).is_file():
        path, name = target, ""
    else:
        path, name = "dvc.yaml", target
    absolute = str((base / path).resolve()) if path else str(base / "dvc.yaml")
    return f"{absolute}:{name}" if name else absolute


def stage_name(stage: Any, root: Path) -> str:
    """The stage's address relative to the checkout's root (``train@moons``, or
    ``pipelines/paper/dvc.yaml:train@mnist``), whatever the current folder."""
    pipeline = Path(os.path.relpath(stage.path, root)).as_posix()
    return stage.name if pipeline == "dvc.yaml" else f"{pipeline}:{stage.name}"


def _commands(cmd: str | list[str]) -> tuple[str, ...]:
    """DVC runs each line of a stage's ``cmd`` (or each item of a list) in turn."""
    return tuple(cmd if isinstance(cmd, list) else cmd.splitlines())


def _options(command: str) -> dict[str, str] | None:
    """A command line's ``--name value`` (or ``--name=value``) options; None when the shell
    could not split it. A flag gets the word after it: only the named options are read."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    options: dict[str, str] = {}
    for word, following in zip(words, [*words[1:], ""], strict=True):
        if word.startswith("--"):
            name, equals, value = word.partition("=")
            options[name] = value if equals else following
    return options


def train_parts(job: Job, root: Path) -> tuple[Job, ...]:
    """The parts of a train stage's job: per (model, seed) of its dataset in its profile (read
    from its command's ``--params``, relative to its wdir, and ``--dataset``), the stage's
    command for that model alone, needing what the stage needs. No parts for another kind of
    job, or a command that is not one line with ``--params`` and ``--dataset`` (and no option of
    one model's, ``ONE_MODEL_OPTIONS``)."""
    from lipbench.profiles import ProfileError, load_profile
    from lipbench.runs import run_keys

    if job.kind != "train" or job.part_of or len(job.commands) != 1:
        return ()
    options = _options(job.commands[0]) or {}
    if not options.get("--params") or not options.get("--dataset") or any(name in options for name in ONE_MODEL_OPTIONS):
        return ()
    try:
        profile = load_profile(root / job.wdir / options["--params"])
    except ProfileError as error:
        raise LaunchError(f"cannot list the models of {job.name}: {error}") from None
    return tuple(
        Job(
            name=f"{job.name}/{key.model}/seed{key.seed}",
            commands=(f"{job.commands[0]} --model {shlex.quote(key.model)} --seed {key.seed}",),
            wdir=job.wdir,
            needs=job.needs,
            pipeline=job.pipeline,
            part_of=job.name,
        )
        for key in run_keys(profile, options["--dataset"])
    )


def fan_out(jobs: Sequence[Job], root: Path) -> tuple[Job, ...]:
    """``jobs`` with each train stage's parts (:func:`train_parts`) just before it; the stage
    needs them too."""
    fanned: list[Job] = []
    for job in jobs:
        parts = train_parts(job, root)
        fanned += [*parts, replace(job, needs=(*job.needs, *(part.name for part in parts)))]
    return tuple(fanned)


class DvcStages:
    """DVC's view of a checkout: the plan of targets and the steps around each job."""

    def __init__(self, root: Path, force: bool = False) -> None:
        from dvc.repo import Repo

        self.root = Path(root).resolve()
        self.repo = Repo(str(self.root))
        self.force = force
        #: The state of each fanned-out stage's parts, found once (what the stage needs is final).
        self._part_states: dict[str, str] = {}

    @contextlib.contextmanager
    def _locked(self, wait_s: float = 0.0) -> Iterator[None]:
        """DVC's repository lock, in the repository's root (DVC resolves some paths from the
        current folder, as its command line runs there). Another DVC process holding it is an
        error, or, with ``wait_s``, waited for that long (a finished job's commit)."""
        from dvc.lock import LockError
        from dvc.repo import lock_repo

        deadline = time.monotonic() + wait_s
        while True:
            stack = contextlib.ExitStack()
            try:
                stack.enter_context(contextlib.chdir(self.root))
                stack.enter_context(lock_repo(self.repo))
                break
            except LockError:
                stack.close()
                if time.monotonic() > deadline:
                    raise LaunchError(
                        f"another DVC process holds the lock of {self.root} (dvc repro, dvc status, another launch?); "
                        "wait for it to end, then launch again"
                    ) from None
                time.sleep(1.0)
        with stack:
            yield

    def _collect(self, target: str, with_deps: bool, base: Path | None = None) -> list[Any]:
        from dvc.exceptions import DvcException

        try:
            return list(self.repo.stage.collect(absolute_target(target, base or self.root), with_deps=with_deps))
        except DvcException as error:
            raise LaunchError(
                f"unknown target {target!r}: {error}; give a dvc.yaml file or a stage of it, "
                "e.g. dvc.yaml:verify@moons or pipelines/mnist/dvc.yaml"
            ) from None

    def plan(self, targets: Sequence[str], exclude_kinds: Sequence[str] = (), base: Path | None = None) -> Plan:
        """The jobs that bring ``targets`` (relative to ``base``, default the root) and the stages
        they depend on up to date, in dependency order, train stages fanned out (:func:`fan_out`);
        stages of the kinds ``exclude_kinds`` (and their dependants) left out."""
        from dvc.exceptions import DvcException

        try:
            with self._locked():
                return self._plan(targets, exclude_kinds, base)
        except DvcException as error:  # e.g. a dvc.yaml or params.yaml DVC cannot resolve
            raise LaunchError(f"DVC cannot read the pipeline: {error}") from None

    def _plan(self, targets: Sequence[str], exclude_kinds: Sequence[str], base: Path | None) -> Plan:
        """:meth:`plan` under DVC's lock: a stage runs when it changed or a stage it needs runs."""
        import networkx as nx

        index = self.repo.index
        position = {stage: number for number, stage in enumerate(index.stages)}
        wanted: list[Any] = []
        for target in targets:
            wanted += [stage for stage in self._collect(target, True, base) if stage not in wanted]
        graph = index.graph.subgraph(wanted)  # edges: stage -> the stages it depends on
        order = list(nx.lexicographical_topological_sort(graph.reverse(copy=True), key=position.__getitem__))
        excluded = {stage for stage in order if stage.name.partition("@")[0] in exclude_kinds}
        to_run: set[Any] = set()
        for stage in order:
            upstream = list(graph.successors(stage))
            if excluded.intersection(upstream):
                excluded.add(stage)
            if stage not in excluded and (self.force or to_run.intersection(upstream) or self._changed(stage)):
                to_run.add(stage)
        jobs = fan_out([self._job(stage, graph, to_run, position) for stage in order if stage in to_run], self.root)
        up_to_date = tuple(stage_name(stage, self.root) for stage in order if stage not in to_run | excluded)
        return Plan(jobs, tuple(targets), up_to_date)

    def _changed(self, stage: Any) -> bool:
        if not stage.cmd:
            if stage.changed():
                name = stage_name(stage, self.root)
                raise LaunchError(f"{name} is data without a command and it changed; `dvc add` or `dvc pull` it first")
            return False
        return bool(stage.changed())

    def _job(self, stage: Any, graph: Any, to_run: set[Any], position: dict[Any, int]) -> Job:
        needs = sorted((up for up in graph.successors(stage) if up in to_run), key=position.__getitem__)
        return Job(
            name=stage_name(stage, self.root),
            commands=_commands(stage.cmd),
            wdir=Path(os.path.relpath(stage.wdir, self.root)).as_posix(),
            needs=tuple(stage_name(up, self.root) for up in needs),
            outs=tuple(Path(os.path.relpath(out.fs_path, self.root)).as_posix() for out in stage.outs if not out.persist),
            pipeline=Path(os.path.relpath(stage.path, self.root)).as_posix(),
        )

    def _stage(self, name: str) -> Any:
        found = [stage for stage in self._collect(name, with_deps=False) if stage_name(stage, self.root) == name]
        if len(found) != 1:
            raise LaunchError(f"no stage {name} in {self.root}'s pipelines (was dvc.yaml changed since the plan was made?)")
        return found[0]

    def settle(self, job: Job) -> str:
        """Just before ``job`` runs, as ``dvc repro`` does: ``up to date`` if the stage no longer
        changed (what it needs came out the same), else its outputs are removed and
        ``restored`` from the run-cache when DVC has this exact run, else ``run``. A part:
        see :meth:`_settle_part`."""
        from dvc.stage.cache import RunCacheNotFoundError

        if job.part_of:
            return self._settle_part(job)
        with self._locked(wait_s=COMMIT_WAIT_S):
            stage = self._stage(job.name)
            if not self.force and not stage.changed():
                return "up to date"
            stage.remove_outs(ignore_remove=False, force=False)
            if self.force:
                return "run"
            try:
                self.repo.stage_cache.restore(stage)
            except RunCacheNotFoundError:
                return "run"
            self._record(stage)
        return "restored"

    def _settle_part(self, part: Job) -> str:
        """``run``, unless the part's stage will not run (``skipped``): it is up to date, or DVC's
        run-cache holds its exact run (a clone with the cache trains nothing). The workspace is
        left as it is; the stage is settled itself after its parts. Found once per stage: its
        parts need what it needs, final before the first part is settled."""
        if self.force:
            return "run"
        if part.part_of not in self._part_states:
            with self._locked(wait_s=COMMIT_WAIT_S):
                self._part_states[part.part_of] = "skipped" if self._stage_will_not_run(part.part_of) else "run"
        return self._part_states[part.part_of]

    def _stage_will_not_run(self, name: str) -> bool:
        """Whether the stage is up to date or DVC's run-cache holds its exact run (under the lock)."""
        from dvc.stage.cache import RunCacheNotFoundError

        stage = self._stage(name)
        if not stage.changed():
            return True
        if not all(dep.exists for dep in stage.deps):  # the parts' commands say what is missing
            return False
        stage.save_deps()
        try:
            self.repo.stage_cache.restore(stage, dry=True)
        except RunCacheNotFoundError:
            return False
        return True

    def commit(self, job: Job) -> None:
        """After ``job`` succeeded: what ``dvc repro`` does after a stage's command (``dvc commit``);
        nothing for a part (its stage is committed after it)."""
        if job.part_of:
            return
        with self._locked(wait_s=COMMIT_WAIT_S):
            self._record(self._stage(job.name))

    def _record(self, stage: Any) -> None:
        """Save the stage's hashes (and its run-cache entry when all its outputs are cached),
        commit its outputs to the cache and write its ``dvc.lock`` entry; git-stage the files
        DVC changed when ``core.autostage`` is on, as ``dvc repro`` does."""
        with self.repo.scm_context(quiet=True):
            uncached = any(not out.use_cache for out in stage.outs if not (out.is_metric or out.is_plot))
            stage.save(run_cache=not uncached)
            stage.commit()
            stage.dump(update_pipeline=False)
