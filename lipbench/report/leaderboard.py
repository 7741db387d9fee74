"""The leaderboard: every model's entry (:mod:`lipbench.entries`), ranked per dataset and
written as JSON, Markdown and HTML.

Ranking, per dataset: verified entries before failed ones (never above), then certified
accuracy at the headline eps on the certify stage's points (the larger set), then
AutoAttack accuracy, then clean accuracy. The clean, certified, AutoAttack and all-attacks
columns are measured on the same points (the attack stage's), named in the header.
Method names: the paper's plain form in JSON and Markdown (``hKR_α^m``), sub- and
superscripts in HTML (:func:`lipbench.report.labels.html_name`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lipbench.entries import LeaderboardEntryError, accuracy_at, build_entry, validate_entry
from lipbench.io import read_json, write_json_atomic, write_text_atomic
from lipbench.report.inputs import ReportInputs
from lipbench.report.labels import html_name

__all__ = ["collect_entries", "rank", "write_leaderboard"]


def collect_entries(inputs: ReportInputs) -> list[dict[str, Any]]:
    """Entries of every trained model of the profile, plus validated external entries."""
    entries = []
    for key in inputs.keys():
        train = inputs.train[key]
        entries.append(
            build_entry(
                inputs.profile.name,
                train.description,
                inputs.certify(key),
                inputs.attack(key),
                inputs.verify(key),
                train,
                explain=inputs.explain(key),
            )
        )
    folder = inputs.layout.external_entries()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        entry = read_json(path)
        try:
            validate_entry(entry)
        except LeaderboardEntryError as error:
            raise LeaderboardEntryError(f"{path}: {error}") from None
        entries.append(entry)
    return entries


def _sort_key(entry: Mapping[str, Any]) -> tuple:
    certified = accuracy_at(entry["certified_acc_certify_points"], entry["eps"])
    autoattack = entry["autoattack_acc"]
    return (
        entry["verification"]["status"] != "verified",  # failed entries after every verified one
        -(certified if certified is not None else -1.0),
        -(autoattack if autoattack is not None else -1.0),
        -entry["clean_acc"],
        entry["name"],
    )


def rank(entries: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Entries grouped by dataset, each group in leaderboard order."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        grouped.setdefault(entry["dataset"], []).append(entry)
    return {dataset: sorted(group, key=_sort_key) for dataset, group in sorted(grouped.items())}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _columns(entries: list[Mapping[str, Any]]) -> list[str]:
    attacked = sorted({entry["points"]["attacked"] for entry in entries})
    certified = sorted({entry["points"]["certified"] for entry in entries})
    same = "/".join(map(str, attacked))
    return [
        "rank",
        "model",
        "method",
        "architecture",
        f"clean ({same} pts)",
        f"certified @eps ({same} pts)",
        f"AutoAttack @eps ({same} pts)",
        f"all attacks @eps ({same} pts)",
        f"certified @eps ({'/'.join(map(str, certified))} pts)",
        "L upper (map / logit)",
        "L lower",
        "verification",
        "train s",
        "params",
        f"µ-fidelity ({_explain_points(entries)} pts)",
        "cos(∇, DeepFool)",
    ]


def _explain_points(entries: list[Mapping[str, Any]]) -> str:
    return "/".join(map(str, sorted({entry["explain"]["points"] for entry in entries if entry.get("explain")}))) or "-"


def _row(position: int, entry: Mapping[str, Any]) -> list[str]:
    eps = entry["eps"]
    lipschitz = entry["lipschitz"]
    status = entry["verification"]["status"]
    explain = entry.get("explain") or {"mu_fidelity": None, "alignment": {}}  # null: evaluated outside the pipeline
    return [
        str(position),
        f"{entry['model']} (seed {entry['seed']})",
        entry["name"],
        entry["architecture"],
        _fmt(entry["clean_acc"]),
        _fmt(accuracy_at(entry["certified_acc"], eps)),
        _fmt(entry["autoattack_acc"]),
        _fmt(accuracy_at(entry["robust_acc"], eps)),
        _fmt(accuracy_at(entry["certified_acc_certify_points"], eps)),
        f"{lipschitz['upper_whole_map']:.4g} / {lipschitz['upper_max_per_logit']:.4g}",
        f"{lipschitz['lower_whole_map']:.4g}",
        "verified" if status == "verified" else "**FAILED**",
        _fmt(entry["train_seconds"], 1),
        str(entry["parameter_count"]),
        _fmt(explain["mu_fidelity"]),
        _fmt(explain["alignment"].get("deepfool_l2")),
    ]


_INTRO = (
    "Ranked per dataset: verified entries first, then certified accuracy at the headline eps (certify points), then "
    "AutoAttack accuracy. L2 threat model; accuracies are fractions. Clean, certified, AutoAttack and all-attacks "
    "columns are measured on the same test points (the attack stage's); the last certified column on the certify "
    "stage's larger set. µ-fidelity (Bhatt et al. 2020) and the cosine between the margin's input gradient and DeepFool's "
    "minimal adversarial direction come from the explain stage (its first test points; Serrurier et al., NeurIPS 2023)."
)


def _markdown(ranked: Mapping[str, list[Mapping[str, Any]]], profile: str) -> str:
    lines = [f"# lipbench leaderboard ({profile} profile)", "", _INTRO, ""]
    for dataset, entries in ranked.items():
        columns = _columns(entries)
        lines += [
            f"## {dataset} (headline eps = {entries[0]['eps']:g})",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns),
        ]
        lines += ["| " + " | ".join(_row(i + 1, entry)) + " |" for i, entry in enumerate(entries)]
        notes = [f"- {entry['model']}: {entry['footnote']}" for entry in entries if entry["footnote"]]
        lines += ["", *notes, ""] if notes else [""]
    return "\n".join(lines)


def _html(ranked: Mapping[str, list[Mapping[str, Any]]], profile: str) -> str:
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>lipbench leaderboard ({html.escape(profile)})</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}td:nth-child(-n+4){text-align:left}"
        "tr.failed{background:#fdd}</style></head><body>",
        f"<h1>lipbench leaderboard ({html.escape(profile)} profile)</h1>",
        f"<p>{html.escape(_INTRO)} Rows in red failed verification and are never ranked above verified ones.</p>",
    ]
    for dataset, entries in ranked.items():
        parts.append(f"<h2>{html.escape(dataset)} (headline eps = {entries[0]['eps']:g})</h2><table><tr>")
        parts += [f"<th>{html.escape(column)}</th>" for column in _columns(entries)]
        parts.append("</tr>")
        for position, entry in enumerate(entries, start=1):
            failed = entry["verification"]["status"] != "verified"
            cells = [html.escape(cell.replace("**", "")) for cell in _row(position, entry)]
            cells[2] = html_name(entry["name"])  # the method column
            title = html.escape(entry["footnote"], quote=True)
            parts.append(f"<tr class='{'failed' if failed else 'ok'}' title='{title}'>")
            parts += [f"<td>{cell}</td>" for cell in cells]
            parts.append("</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def outward(value: float, upward: bool, significant: int = 5) -> float:
    """``value`` rounded to ``significant`` digits away from what it bounds: up for an upper
    bound, down for a lower one, so the rounded number is still a bound (never past it)."""
    if value == 0 or not math.isfinite(value):
        return value
    scale = 10.0 ** (significant - 1 - math.floor(math.log10(abs(value))))
    rounded = (math.ceil if upward else math.floor)(value * scale) / scale
    while (rounded < value) if upward else (rounded > value):  # the division's own rounding
        rounded = math.nextafter(rounded, math.inf if upward else -math.inf)
    return rounded


def scores(ranked: Mapping[str, list[Mapping[str, Any]]], seeds: int) -> dict[str, Any]:
    """The few scalars a user compares between runs (``dvc metrics show``, ``dvc exp show``):
    per dataset its headline eps and, per model, clean, certified, all-attacks and AutoAttack
    accuracy at that eps (the same attack points), the Lipschitz bounds (5 significant digits,
    rounded outward: float noise in the last digits is not a change) and the training seconds
    (to 0.01 s). Models are named ``model`` (``model@seed<k>`` when the profile has several seeds)."""
    result: dict[str, Any] = {}
    for dataset, entries in ranked.items():
        result[dataset] = {"eps": entries[0]["eps"]}
        for entry in sorted(entries, key=lambda e: (e["model"], e["seed"])):
            eps, lipschitz = entry["eps"], entry["lipschitz"]
            name = entry["model"] if seeds == 1 else f"{entry['model']}@seed{entry['seed']}"
            result[dataset][name] = {
                "clean": entry["clean_acc"],
                "certified": accuracy_at(entry["certified_acc"], eps),
                "robust": accuracy_at(entry["robust_acc"], eps),
                "autoattack": entry["autoattack_acc"],
                "lipschitz_upper": outward(lipschitz["upper_whole_map"], upward=True),
                "lipschitz_lower": outward(lipschitz["lower_whole_map"], upward=False),
                "train_seconds": None if entry["train_seconds"] is None else round(entry["train_seconds"], 2),  # none: external
            }
    return result


def write_leaderboard(inputs: ReportInputs, out_dir: Path) -> dict[str, Path]:
    """Write ``leaderboard.json``, ``leaderboard.md``, ``leaderboard.html`` and ``scores.json``
    (the scalars DVC shows as metrics) into ``out_dir``."""
    ranked = rank(collect_entries(inputs))
    paths = {kind: out_dir / f"leaderboard.{kind}" for kind in ("json", "md", "html")}
    paths["scores"] = out_dir / "scores.json"
    write_json_atomic(paths["scores"], scores(ranked, len(inputs.profile.seeds)))
    write_json_atomic(paths["json"], {"profile": inputs.profile.name, "datasets": ranked})
    write_text_atomic(paths["md"], _markdown(ranked, inputs.profile.name))
    write_text_atomic(paths["html"], _html(ranked, inputs.profile.name))
    return paths
