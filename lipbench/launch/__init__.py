"""Run a DVC pipeline's stages as jobs: side by side on this machine or as Slurm jobs.

lipbench says which jobs and in which order; submitit runs them. The parts, each with the
root of the checkout passed in explicitly:

- :mod:`~lipbench.launch.plan`: a plan is a file of jobs (name, commands, working folder,
  the jobs it needs, the outputs to clear first), standard library only.
- :mod:`~lipbench.launch.stages`: the plan of DVC targets from DVC's Python API (the stage
  graph of ``Repo.index``, only stages that are not up to date) and the DVC side of each job:
  skip it if up to date, restore it from the run-cache, ``commit`` it after success.
- :mod:`~lipbench.launch.runner`: runs a plan with submitit's LocalExecutor, ``--jobs`` at
  a time, recording each job's command, log, exit status and wall time (standard library
  and submitit only: it also runs on a host without DVC).
- :mod:`~lipbench.launch.slurm`: the same plan as Slurm jobs (``afterok`` dependencies).
- :mod:`~lipbench.launch.archive` and :mod:`~lipbench.launch.bundle`: the offline bundle.
- :mod:`~lipbench.launch.launcher`: ``lipbench launch`` put together.

Nothing here imports DVC or submitit at module level: the offline host imports the runner.
"""
