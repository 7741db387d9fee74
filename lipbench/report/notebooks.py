"""Execute the report notebooks (jupytext ``py:percent``) and render them to HTML.

Each notebook runs in a fresh kernel (the Python running lipbench), with the working
directory given by the caller (the repository root) and two environment variables:
``LIPBENCH_PARAMS`` (the profile's params file) and ``LIPBENCH_REPORT_OUT`` (the report's
output folder ``<out>``; the notebooks save their figures in ``<out>/figures``). Cell
timing is not recorded, so the rendered HTML depends on the inputs only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["NOTEBOOKS_DIR", "PARAMS_ENV", "OUT_ENV", "NotebookError", "notebook_sources", "run_notebook"]

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "reports" / "notebooks"
PARAMS_ENV = "LIPBENCH_PARAMS"
OUT_ENV = "LIPBENCH_REPORT_OUT"


class NotebookError(RuntimeError):
    """A report notebook failed; the message names it and carries the cell's error."""


def notebook_sources(folder: str | os.PathLike[str] = NOTEBOOKS_DIR) -> list[Path]:
    """The ``*.py`` notebooks of ``folder``, sorted by name."""
    folder = Path(folder)
    sources = sorted(folder.glob("*.py")) if folder.is_dir() else []
    if not sources:
        raise FileNotFoundError(f"no report notebooks (*.py, jupytext py:percent) in {folder}")
    return sources


def _kernel_env(params: Path, out_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            PARAMS_ENV: str(params.resolve()),
            OUT_ENV: str(out_dir.resolve()),
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # silence the debugger's frozen-modules warning
            "JUPYTER_PLATFORM_DIRS": "1",
        }
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_notebook(
    source: Path,
    params: Path,
    out_dir: Path,
    cwd: Path,
    timeout: int = 600,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Execute ``source`` and write ``<out_dir>/notebooks/<name>.html``; return its path."""
    import jupytext
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    from nbconvert import HTMLExporter

    from lipbench.io import write_text_atomic

    started = time.perf_counter()
    notebook = jupytext.read(source, fmt="py:percent")
    for number, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{number}"  # jupytext draws random ids: fixed ones keep the HTML reproducible
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=timeout,
        record_timing=False,
        resources={"metadata": {"path": str(cwd)}},
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    try:
        client.execute(env=_kernel_env(params, out_dir))
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
        raise NotebookError(f"report notebook {source} failed:\n{error}") from None
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook, resources={"metadata": {"name": source.stem}})
    target = out_dir / "notebooks" / f"{source.stem}.html"
    write_text_atomic(target, body)
    if log is not None:
        log(f"notebook {source.name}: {time.perf_counter() - started:.1f} s")
    return target
