"""Execute the report notebooks (jupytext ``py:percent``) and render them to HTML.

Each notebook runs in a fresh kernel (the Python running lipbench), with the working
directory given by the caller (the repository root) and two environment variables:
``LIPBENCH_PARAMS`` (the profile's params file) and ``LIPBENCH_REPORT_OUT`` (the report's
output folder ``<out>``; the notebooks save their figures in ``<out>/figures``). Cell
timing is not recorded, so the rendered HTML depends on the inputs only.

The published HTML is clean and self-contained: stderr outputs (warnings, progress bars)
are taken out before export and echoed to the build log instead; absolute paths of this
machine in the outputs are shortened (:func:`path_replacements`); the page loads nothing from a
CDN (nbconvert's lab template without require.js, MathJax and mermaid, so the notebooks'
Markdown writes math as plain Unicode text, e.g. ℓ₂ and ε).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "NOTEBOOKS_DIR",
    "PARAMS_ENV",
    "OUT_ENV",
    "NotebookError",
    "notebook_sources",
    "clean_outputs",
    "path_replacements",
    "run_notebook",
]

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "reports" / "notebooks"
PARAMS_ENV = "LIPBENCH_PARAMS"
OUT_ENV = "LIPBENCH_REPORT_OUT"


#: nbconvert's lab template minus the blocks that load scripts from a CDN.
_OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
#: Warnings the kernel filters before any cell runs (known and harmless in a headless kernel).
_KERNEL_FILTERS = ("import warnings; warnings.filterwarnings('ignore', message='IProgress not found')",)


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


def path_replacements(out_dir: Path, cwd: Path) -> list[tuple[str, str]]:
    """(absolute prefix, shown instead) pairs, longest first: the report folder, the Python
    environment, the working directory and the home folder."""
    pairs = {
        str(out_dir.resolve()): "<report>",
        str(Path(sys.prefix).resolve()): "<python>",
        str(cwd.resolve()): ".",
        str(Path.home().resolve()): "~",
    }
    return sorted(((k, v) for k, v in pairs.items() if len(k) > 1), key=lambda pair: -len(pair[0]))


def _shorten(text: str, replacements: Sequence[tuple[str, str]]) -> str:
    for prefix, shown in replacements:
        text = text.replace(prefix, shown)
    return text


def clean_outputs(notebook: Any, replacements: Sequence[tuple[str, str]]) -> list[str]:
    """Remove stderr outputs and shorten absolute paths in the text outputs of ``notebook``
    (in place); return the removed stderr texts."""
    removed = []
    for cell in notebook.cells:
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                removed.append(_shorten(output.get("text", ""), replacements))
                continue
            if output.get("output_type") == "stream":
                output["text"] = _shorten(output.get("text", ""), replacements)
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    output["data"][mime] = _shorten(value, replacements)
            kept.append(output)
        if "outputs" in cell:
            cell["outputs"] = kept
    return removed


def _export(notebook: Any, name: str) -> str:
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    loader = DictLoader({"lipbench_offline.html.j2": _OFFLINE_TEMPLATE})
    exporter = HTMLExporter(template_name="lab", extra_loaders=[loader], template_file="lipbench_offline.html.j2")
    body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": name}})
    return body


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
        extra_arguments=["--IPKernelApp.log_level=ERROR", *(f"--IPKernelApp.exec_lines={line}" for line in _KERNEL_FILTERS)],
    )
    try:
        client.execute(env=_kernel_env(params, out_dir))
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
        raise NotebookError(f"report notebook {source} failed:\n{error}") from None
    removed = clean_outputs(notebook, path_replacements(out_dir, cwd))
    target = out_dir / "notebooks" / f"{source.stem}.html"
    write_text_atomic(target, _export(notebook, source.stem))
    if log is not None:
        for text in removed:
            log(f"notebook {source.name}: stderr left out of the page: {text.strip()}")
        log(f"notebook {source.name}: {time.perf_counter() - started:.1f} s")
    return target
