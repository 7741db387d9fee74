"""What a reviewer sees of DVC's own tables after one ``-S`` change (issue 12's targets), in a
clone restored from this repository's DVC cache.

Clones the repository's HEAD into a scratch folder with a copy of this repository's DVC cache
(run ``dvc repro`` here first, so the cache holds HEAD's outputs; the copy's run-cache is
dropped before the experiment, which then runs as a change made for the first time) and
measures, in one run:

- ``dvc repro`` in the clone: the stages it runs (goal: none) and ``git status`` after it;
- ``dvc exp run -S <change>``: seconds, stages run, models recomputed and reused per stage;
- ``dvc metrics show``: lines;
- ``dvc exp show --only-changed``: the width of the whole table and, on a terminal of
  ``--columns`` columns without the pager, the rendered width and whether every changed
  score and parameter is shown in full (DVC folds columns that do not fit into one "…");
  the columns by kind (scores, parameters, dependencies);
- ``dvc metrics diff``: the changed numbers, and whether any is not a number.

Usage: ``python benchmarks/dvc_tables.py [--set train.moons.hkr.alpha=40] [--columns 200]
[--out dvc_tables.json]``. Stages run with ``lipbench`` from this interpreter's folder and the
clone's source (PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lipbench.environment import environment_record

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str], columns: int | None = None, log: bool = False) -> str:
    """``args``' standard output, with its standard error when ``log`` (a failure raises)."""
    env = env | ({"COLUMNS": str(columns)} if columns else {})
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr if log else done.stdout


def _width(table: str) -> int:
    return max((len(line.rstrip("\n")) for line in table.splitlines()), default=0)


def _clone(scratch: Path) -> tuple[Path, dict[str, str]]:
    """A clone of HEAD with a copy of this repository's DVC cache, and the environment its
    stages need."""
    clone = scratch / "clone"
    env = dict(os.environ, PYTHONPATH=str(clone), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    _run(["git", "clone", "--quiet", str(ROOT), str(clone)], scratch, env)
    cache = Path(_run(["dvc", "cache", "dir"], ROOT, env).strip().splitlines()[-1])
    shutil.copytree(cache, scratch / "cache")
    _run(["dvc", "cache", "dir", "--local", str(scratch / "cache")], clone, env)
    return clone, env


def _stages(log: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", log)


def _experiment(clone: Path, env: dict[str, str], change: str) -> dict:
    started = time.perf_counter()
    log = _run(["dvc", "exp", "run", "-n", "bench", "-S", change], clone, env, log=True)
    seconds = time.perf_counter() - started
    trained = re.findall(r"lipbench train: (\S+): test accuracy \S+ in ", log)
    computed = re.findall(r"lipbench (certify|attack|verify): (\S+) done in", log)
    return {
        "change": change,
        "seconds": round(seconds, 1),
        "stages_run": _stages(log),
        "trained": trained,
        "train_reused": len(re.findall(r"lipbench train: \S+: reused", log)),
        "evaluated": {stage: [label for done, label in computed if done == stage] for stage in ("certify", "attack", "verify")},
    }


def _exp_show(clone: Path, env: dict[str, str], columns: int) -> dict:
    """The changed columns by kind, the whole table's width and the rendered width on ``columns``."""
    rows = json.loads(_run(["dvc", "exp", "show", "--json"], clone, env))
    experiments = [
        exp for row in rows for exp in [row] + [e for run in row.get("experiments") or [] for e in run.get("revs") or []]
    ]
    kinds: dict[str, set[str]] = {}
    for kind in ("metrics", "params", "deps"):
        values: dict[tuple[str, str], set[str]] = {}  # (file, name) -> the values seen
        for experiment in experiments:
            data = (experiment.get("data") or {}).get(kind) or {}
            for path, content in data.items():
                if kind == "deps":
                    values.setdefault(("", path), set()).add(json.dumps((content or {}).get("hash")))
                    continue
                for name, value in _flatten((content or {}).get("data") or {}):
                    values.setdefault((path, name), set()).add(json.dumps(value))
        names = [name for _, name in values]
        # DVC names a column by its key, prefixed by its file where two files share the key
        kinds[kind] = {
            name if names.count(name) == 1 else f"{path}:{name}" for (path, name), seen in values.items() if len(seen) > 1
        }
    tracked = [dep for dep in sorted(kinds["deps"]) if _run(["git", "ls-files", "--", dep], clone, env).strip()]
    revs = [exp["rev"] for exp in experiments if exp.get("rev") not in (None, "workspace")]
    edited = _run(["git", "diff", "--name-only", *revs[:2], "--", *tracked], clone, env).split() if tracked else []
    whole = _run(["dvc", "exp", "show", "--only-changed", "--no-pager"], clone, env, columns=100_000)
    narrow = _run(["dvc", "exp", "show", "--only-changed", "--no-pager"], clone, env, columns=columns)
    header = next((line for line in narrow.splitlines() if "Experiment" in line), "")
    shown = [name for name in sorted(kinds["metrics"] | kinds["params"]) if _shown(name, header)]
    return {
        "changed_scores": sorted(kinds["metrics"]),
        "changed_params": sorted(kinds["params"]),
        "changed_dependencies": sorted(kinds["deps"]),
        # git-tracked (code and records) among them, and what git says changed in them between
        # the baseline and the experiment: code shown as changed without a change is DVC's merge of
        # the same path's dependencies across the repository's dvc.yaml files (the note in README)
        "git_tracked_dependencies": tracked,
        "git_changes_in_them": edited,
        "whole_width": _width(whole),
        "rendered_width": _width(narrow),
        "columns": columns,
        "scores_and_params_shown_in_full": len(shown) == len(kinds["metrics"] | kinds["params"]),
        "rendered": narrow.splitlines()[:6],
    }


def _shown(name: str, header: str) -> bool:
    """Whether the header line holds the column name in full (DVC names a metric by its key
    path in the file, a parameter by its dotted path)."""
    return re.search(rf"(^|\s){re.escape(name)}(\s|$)", header) is not None


def _flatten(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    items: list[tuple[str, object]] = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        items += _flatten(value, name + ".") if isinstance(value, dict) else [(name, value)]
    return items


def measure(change: str, columns: int) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="lipbench-dvc-tables-"))
    try:
        clone, env = _clone(scratch)
        started = time.perf_counter()
        repro = _run(["dvc", "repro"], clone, env, log=True)
        restored = {
            "seconds": round(time.perf_counter() - started, 1),
            "stages_run": _stages(repro),
            "git_status": _run(["git", "status", "--porcelain"], clone, env).splitlines(),
        }
        metrics_show_lines = len(_run(["dvc", "metrics", "show"], clone, env).splitlines())
        # the change has never run: without the run-cache (which may hold it from an earlier
        # run here), DVC runs the stages it changes instead of restoring them
        shutil.rmtree(scratch / "cache" / "runs", ignore_errors=True)
        experiment = _experiment(clone, env, change)
        table = _exp_show(clone, env, columns)
        diff = json.loads(_run(["dvc", "metrics", "diff", "--json", "HEAD"], clone, env) or "{}")
        changed = {f"{path}:{name}": value for path, metrics in diff.items() for name, value in metrics.items()}
        numbers = all(isinstance(value.get("new"), (int, float)) for value in changed.values())
        return {
            "restored_clone_repro": restored,
            "metrics_show_lines": metrics_show_lines,
            "experiment": experiment,
            "exp_show_only_changed": table,
            "metrics_diff": {"changed": changed, "all_numbers": numbers},
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="train.moons.hkr.alpha=40", help="the one -S change")
    parser.add_argument("--columns", type=int, default=200, help="the terminal width to render on")
    parser.add_argument("--out", type=Path, help="write the results here (JSON)")
    args = parser.parse_args()
    started = time.perf_counter()
    results = measure(args.set, args.columns)
    results["environment"] = environment_record("cpu", 0) | {"wall_seconds": round(time.perf_counter() - started, 1)}
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
