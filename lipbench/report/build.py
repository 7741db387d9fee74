"""The report stage: regenerate ``reports/<profile>/`` whole from the pipeline's outputs.

Everything is built in a hidden temporary folder beside the report and swapped in at
the end, so a failure leaves the previous report as it was and files of earlier runs
disappear. ``metrics/`` (stage outputs, and ``metrics/external`` leaderboard entries of
external checkpoints) and hidden entries (``.gitignore``) are never touched.

Layout: ``figures/*.{png,svg}`` (written by the notebooks), ``tables/*.{md,csv,tex}``,
``plots/<dataset>/<model>.csv`` (``dvc plots``), ``plots.html`` (those plots and the
training histories, drawn offline: :mod:`lipbench.report.vega`), ``notebooks/*.html``,
``leaderboard.{json,md,html}`` and ``index.html``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lipbench.profiles import Profile
from lipbench.report.freshness import refresh_stage_records, refresh_train_records
from lipbench.report.inputs import ReportInputs, check_inputs, read_inputs
from lipbench.runs import RunKey

__all__ = ["KEPT", "expected_figures", "build_report"]

KEPT = ("metrics",)


def _kept(name: str) -> bool:
    return name in KEPT or name.startswith(".")


def expected_figures(inputs: ReportInputs) -> list[str]:
    """Stems of the figures the notebooks must produce for the profile (PNG and SVG each)."""
    from lipbench.report.images import hkr_model

    profile = inputs.profile
    stems = []
    if "moons" in profile.datasets and any(m in profile.models for m in ("kr", "hkr")):
        stems += ["moons_level_sets", "moons_histograms"]
    for dataset in profile.datasets:
        stems += [f"robustness_{dataset}", f"deepfool_{dataset}", f"explain_{dataset}"]
        if inputs.is_image_dataset(dataset):
            stems.append(f"adversarial_{dataset}")
            seed = profile.seeds[0]
            unconstrained = any(not inputs.train[RunKey(dataset, m, seed)].constrained for m in profile.models)
            if unconstrained or hkr_model(inputs, dataset) is not None:
                stems.append(f"saliency_{dataset}")
    return stems


def _swap_in(staging: Path, target: Path) -> None:
    """Replace the generated entries of ``target`` by those of ``staging`` (rolled back on error)."""
    target.mkdir(parents=True, exist_ok=True)
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    moved_out: list[str] = []
    moved_in: list[str] = []
    try:
        for entry in sorted(target.iterdir()):
            if not _kept(entry.name):
                os.replace(entry, trash / entry.name)
                moved_out.append(entry.name)
        for entry in sorted(staging.iterdir()):
            os.replace(entry, target / entry.name)
            moved_in.append(entry.name)
    except BaseException:
        for name in moved_in:
            os.replace(target / name, staging / name)
        for name in moved_out:
            os.replace(trash / name, target / name)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def build_report(
    profile: Profile,
    progress: bool = True,
    notebooks_dir: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Build the report of ``profile`` into ``profile.path_of("reports")``; return what was written.

    ``notebooks_dir`` defaults to the repository's ``reports/notebooks``; ``cwd`` (the
    notebooks' working directory, against which the profile's relative paths resolve)
    to the current directory. Missing inputs raise :class:`ReportInputError` before any work.
    """
    from lipbench.report.notebooks import NOTEBOOKS_DIR, notebook_sources

    started = time.perf_counter()
    log = (lambda message: print(f"lipbench report: {message}", flush=True)) if progress else (lambda message: None)
    check_inputs(profile)
    for note in refresh_train_records(profile) + refresh_stage_records(profile):  # said even when quiet
        print(f"lipbench report: {note}", flush=True)
    inputs = read_inputs(profile, check=False)
    sources = notebook_sources(notebooks_dir or NOTEBOOKS_DIR)
    expected = expected_figures(inputs)
    reports_dir = profile.path_of("reports")
    reports_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{reports_dir.name}.build-", dir=reports_dir.parent))
    try:
        result = _build_into(inputs, staging, sources, Path(cwd or Path.cwd()), expected, log)
        _swap_in(staging, reports_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    moved = {key: [reports_dir / p.relative_to(staging) for p in paths] for key, paths in result.items() if key != "leaderboard"}
    outputs: dict[str, Any] = {"reports": reports_dir, **moved, "index": reports_dir / "index.html"}
    outputs["plots_page"] = reports_dir / "plots.html"
    outputs["leaderboard"] = {kind: reports_dir / path.relative_to(staging) for kind, path in result["leaderboard"].items()}
    outputs["seconds"] = time.perf_counter() - started
    log(f"{reports_dir} written in {outputs['seconds']:.1f} s")
    return outputs


def _build_into(inputs: ReportInputs, out: Path, sources: list[Path], cwd: Path, expected: list[str], log) -> dict[str, Any]:
    from lipbench.io import write_text_atomic
    from lipbench.report.index import render_index
    from lipbench.report.leaderboard import write_leaderboard
    from lipbench.report.notebooks import NotebookError
    from lipbench.report.plot_csvs import write_plot_csvs
    from lipbench.report.plotting import FORMATS
    from lipbench.report.tables import all_tables, write_tables
    from lipbench.report.vega import write_plots_page

    profile = inputs.profile
    tables = all_tables(inputs)
    table_paths = write_tables(tables, out / "tables")
    plots = write_plot_csvs(inputs, out / "plots")
    log(f"{len(table_paths)} table files, {len(plots)} plot files")
    (out / "figures").mkdir()
    notebooks = _run_notebooks(sources, profile.path, out, cwd, log)
    figures = sorted(path for path in (out / "figures").iterdir() if path.is_file())
    wanted = [f"{stem}.{fmt}" for stem in expected for fmt in FORMATS]
    missing = [name for name in wanted if not (out / "figures" / name).is_file()]
    if missing:
        raise NotebookError(f"the report notebooks in {sources[0].parent} did not produce the figures {', '.join(missing)}")
    leaderboard = write_leaderboard(inputs, out)
    plots_page = write_plots_page(inputs, out, plots)
    index = render_index(inputs, out, figures, tables, plots, notebooks, leaderboard, plots_page, cwd)
    write_text_atomic(out / "index.html", index)
    return {"figures": figures, "tables": table_paths, "plots": plots, "notebooks": notebooks, "leaderboard": leaderboard}


def _run_notebooks(sources: list[Path], params: Path, out: Path, cwd: Path, log) -> list[Path]:
    """Execute the notebooks, one kernel per core at a time (each kernel is its own process;
    they write distinct figures); their pages in ``sources`` order."""
    from concurrent.futures import ThreadPoolExecutor

    from lipbench.report.notebooks import run_notebook

    with ThreadPoolExecutor(max_workers=max(1, min(len(sources), os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda source: run_notebook(source, params, out, cwd, log=log), sources))
