"""Compare a fresh run's metrics with the committed ones, within stated tolerances.

Numbers are compared leaf by leaf. Timings, the environment, fingerprints and attack
provenance are not compared (they legitimately change). Tolerances (absolute unless said):

=====================================  =========================================
accuracies, success rates, radii        0.02
Lipschitz bounds and norms              relative 1e-3 (upper), 5e-2 (lower)
losses                                  relative 5e-2
counts (points, calls, parameters)      exact
strings (status, names)                 exact
=====================================  =========================================

Every relative tolerance has an absolute floor of 1e-3: a value near 0 may differ by 1e-3.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Comparison", "IGNORED_KEYS", "compare_values", "compare_metrics", "committed_version", "format_table"]

IGNORED_KEYS = frozenset(
    {
        "timing",
        "seconds",
        "seconds_total",
        "attack_seconds",
        "environment",
        "fingerprint",
        "info",
        "reused",
        "recomputed",
        "peak_memory_mb",
        "sources",
        "failures",
    }
)


@dataclass(frozen=True)
class Comparison:
    file: str
    key: str
    committed: Any
    fresh: Any
    tolerance: str
    ok: bool


def _tolerance(key: str, value: Any) -> tuple[str, float, bool]:
    """(description, tolerance, relative?) for a numeric leaf, from its key path."""
    leaf = key.rsplit(".", 1)[-1].split("[")[0]
    lowered = key.lower()
    if isinstance(value, int) and not isinstance(value, bool):
        return "exact", 0.0, False
    if "loss" in leaf:
        return "rel 5e-2", 5e-2, True
    if "lower" in lowered and any(word in lowered for word in ("lipschitz", "lower_bound", "whole_map", "per_logit")):
        return "rel 5e-2", 5e-2, True
    if any(word in lowered for word in ("lipschitz", "upper", "bound", "whole_map", "per_logit", "layers")):
        return "rel 1e-3", 1e-3, True
    return "abs 0.02", 0.02, False


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, child in value.items():
            if key not in IGNORED_KEYS:
                yield from _leaves(child, f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _leaves(child, f"{prefix}[{index}]")
    else:
        yield prefix, value


def compare_values(file: str, committed: Any, fresh: Any) -> list[Comparison]:
    """Leaf-by-leaf comparison of two metrics documents."""
    old, new = dict(_leaves(committed)), dict(_leaves(fresh))
    rows = []
    for key in sorted(set(old) | set(new)):
        if key not in old or key not in new:
            rows.append(Comparison(file, key, old.get(key, "<absent>"), new.get(key, "<absent>"), "present", False))
            continue
        a, b = old[key], new[key]
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
            description, tolerance, relative = _tolerance(key, a)
            if math.isinf(a) or math.isinf(b) or math.isnan(a) or math.isnan(b):
                ok = a == b or (math.isnan(a) and math.isnan(b))
            else:
                # relative: max(tolerance * |a|, 1e-3), the absolute floor near 0 (0 when tolerance is 0)
                limit = tolerance * max(abs(a), 1e-3 / max(tolerance, 1e-12)) if relative else tolerance
                ok = abs(a - b) <= limit
            rows.append(Comparison(file, key, a, b, description, ok))
        else:
            rows.append(Comparison(file, key, a, b, "exact", a == b))
    return rows


def _git_root(folder: Path) -> Path:
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=folder, capture_output=True, text=True)
    if root.returncode != 0:
        raise ValueError(f"{folder} is not inside a git checkout; check-repro compares with committed metrics")
    return Path(root.stdout.strip()).resolve()


def committed_version(path: Path, revision: str = "HEAD", root: Path | None = None) -> Any | None:
    """The JSON content of ``path`` at ``revision`` (None when it was not committed).

    ``root``: the checkout's top folder (found from ``path`` when not given)."""
    root = _git_root(path.parent) if root is None else root
    relative = path.resolve().relative_to(root)
    shown = subprocess.run(["git", "show", f"{revision}:{relative.as_posix()}"], cwd=root, capture_output=True)
    return json.loads(shown.stdout) if shown.returncode == 0 else None


def compare_metrics(metrics_dir: Path, revision: str = "HEAD") -> list[Comparison]:
    """Every JSON metrics file under ``metrics_dir`` against its committed version."""
    if not metrics_dir.is_dir():
        raise FileNotFoundError(f"{metrics_dir} does not exist; run the pipeline first (dvc repro)")
    root = _git_root(metrics_dir)
    rows: list[Comparison] = []
    for path in sorted(metrics_dir.rglob("*.json")):
        committed = committed_version(path, revision, root)
        name = str(path)
        if committed is None:
            rows.append(Comparison(name, "(file)", "<not committed>", "present", "present", False))
            continue
        rows += compare_values(name, committed, json.loads(path.read_text()))
    return rows


def format_table(rows: list[Comparison], only_mismatches: bool = False) -> str:
    shown = [row for row in rows if not (only_mismatches and row.ok)]
    lines = ["| status | file | metric | committed | fresh | tolerance |", "|---|---|---|---|---|---|"]

    def fmt(value: Any) -> str:
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    for row in shown:
        status = "match" if row.ok else "MISMATCH"
        lines.append(f"| {status} | {row.file} | {row.key} | {fmt(row.committed)} | {fmt(row.fresh)} | {row.tolerance} |")
    matched = sum(row.ok for row in rows)
    lines.append("")
    lines.append(f"{matched} of {len(rows)} metrics match the committed run; {len(rows) - matched} do not.")
    return "\n".join(lines)
