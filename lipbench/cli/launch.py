"""``lipbench launch [TARGETS] --executor {local,slurm}``: run the DVC stages of the targets
that are not up to date as jobs (submitit), side by side where their inputs are ready, and
``dvc commit`` each finished stage (so ``dvc status`` and ``dvc repro`` agree afterwards).

    lipbench launch dvc.yaml:verify@moons --executor local --jobs 2
    lipbench launch pipelines/paper/dvc.yaml --executor slurm --slurm-partition gpu \\
        --gpus-per-job 1 --cpus-per-job 8 --mem-gb 32 --time 4:00:00

Exit status 0 when every stage is up to date at the end, 1 when a job failed (its log's end
is shown; its dependants did not run; nothing is committed for it), 2 for bad options.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("targets", nargs="*", help="dvc.yaml files or stages (dvc repro's targets; default dvc.yaml)")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local", help="where jobs run (default local)")
    parser.add_argument("--jobs", type=int, default=None, help="local: jobs at a time (default 1)")
    parser.add_argument("--force", action="store_true", help="run every stage of the targets, as dvc repro --force")
    parser.add_argument("--dry", action="store_true", help="print the jobs by level and run nothing")
    parser.add_argument("--folder", type=Path, default=None, help="records, logs, submitit files (default .launch/<time>)")
    slurm = parser.add_argument_group("Slurm (--executor slurm; default from the launch: section of params.yaml)")
    slurm.add_argument("--slurm-partition", dest="partition", default=None, help="partition")
    slurm.add_argument("--gpus-per-job", type=int, default=None, help="GPUs per job (stages that use none ask for none)")
    slurm.add_argument("--cpus-per-job", type=int, default=None, help="CPUs per job (sets OMP_NUM_THREADS too)")
    slurm.add_argument("--mem-gb", type=float, default=None, help="memory per job in GB")
    slurm.add_argument("--time", default=None, help="time limit per job: minutes or [days-]hours:minutes:seconds")
    slurm.add_argument("--slurm-account", dest="account", default=None, help="account to charge")


def run(args: argparse.Namespace) -> int:
    from lipbench.launch.launcher import SLURM_OPTIONS, launch, report

    slurm = {key: getattr(args, key) for key in SLURM_OPTIONS}
    options = {"executor": args.executor, "jobs": args.jobs, "force": args.force, "folder": args.folder, "dry": args.dry}
    result = launch(_repository_root(), args.targets or ["dvc.yaml"], slurm=slurm, base=Path.cwd(), **options)
    print(report(result))
    return 0 if result.ok else 1


def _repository_root() -> Path:
    """The DVC repository holding the current folder."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Path(Repo.find_root())
    except NotDvcRepoError:
        raise ValueError(f"{Path.cwd()} is not inside a DVC repository; run lipbench launch from the checkout") from None
