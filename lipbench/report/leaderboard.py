"""The leaderboard: one validated JSON entry per (dataset, model, seed), ranked per dataset.

Entries carry RobustBench's fields (name, link, authors, venue, architecture, dataset,
threat model, eps, clean_acc, autoattack_acc, additional_data, footnote) plus certified
accuracy at every eps, the verified Lipschitz bounds and status, per-attack robustness,
costs and the environment (``leaderboard.schema.json``). Ranking, per dataset: verified
entries before failed ones (never above), then certified accuracy at the headline eps,
then AutoAttack accuracy, then clean accuracy.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from lipbench.io import read_json, write_json_atomic, write_text_atomic
from lipbench.methods import get_method
from lipbench.profiles import Profile

__all__ = [
    "SCHEMA_PATH",
    "LeaderboardEntryError",
    "validate_entry",
    "build_entry",
    "collect_entries",
    "external_entries_dir",
    "rank",
    "write_leaderboard",
]

SCHEMA_PATH = Path(__file__).with_name("leaderboard.schema.json")


class LeaderboardEntryError(ValueError):
    """An entry does not satisfy the schema; the message names the field."""


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


def validate_entry(entry: Mapping[str, Any]) -> None:
    """Raise :class:`LeaderboardEntryError` naming the first invalid field."""
    errors = sorted(_validator().iter_errors(entry), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        label = entry.get("name", "?") if isinstance(entry, Mapping) else "?"
        where = f"field '{field}'" if field else "the entry"
        raise LeaderboardEntryError(f"leaderboard entry {label!r}: {where}: {error.message}")


def _curve(epsilons: Iterable[float], values: Iterable[float]) -> list[dict[str, float]]:
    return [{"eps": float(eps), "acc": float(value)} for eps, value in zip(epsilons, values)]


def _at(curve: list[dict[str, float]], eps: float) -> float | None:
    return next((point["acc"] for point in curve if point["eps"] == eps), None)


def build_entry(
    profile_name: str,
    dataset: str,
    model: str,
    seed: int,
    method_name: str,
    architecture: str,
    headline_eps: float,
    train: Mapping[str, Any] | None,
    certify: Mapping[str, Any],
    attack: Mapping[str, Any],
    verify: Mapping[str, Any],
    external: bool = False,
) -> dict[str, Any]:
    """One entry from the stage summaries of a model (``train`` is None for external models)."""
    method = get_method(method_name)
    epsilons = certify["epsilons"]
    per_attack = {name: _curve(attack["epsilons"], acc) for name, acc in attack["per_attack_robust_accuracy"].items()}
    autoattack = per_attack.get("autoattack_l2")
    lower = verify["lower_bound"]
    upper = certify["lipschitz_upper_bound"]
    status = verify["status"]
    notes = []
    if status != "verified":
        notes.append("FAILED verification: certificates not trusted")
    if not method.constrained:
        notes.append(f"unconstrained network: strict bound L <= {upper['whole_map']:.3g}, certificates are tiny")
    if external:
        notes.append("externally trained checkpoint")
    attack_precision = attack.get("precision", "fp32")
    if attack_precision != "fp32":
        notes.append(f"attacks searched in {attack_precision} (hits re-checked in fp32)")
    entry = {
        "name": f"{method.paper_name} ({model})" if model != method_name else method.paper_name,
        "link": method.reference.get("link", ""),
        "authors": method.reference.get("authors", ""),
        "venue": method.reference.get("venue", ""),
        "architecture": f"{architecture} ({method.kit})",
        "dataset": dataset,
        "threat_model": "L2",
        "eps": float(headline_eps),
        "clean_acc": float(train["test_accuracy"] if train is not None else certify["clean_accuracy"]),
        "autoattack_acc": None if autoattack is None else _at(autoattack, headline_eps),
        "additional_data": False,
        "footnote": "; ".join(notes),
        "model": model,
        "method": method_name,
        "seed": int(seed),
        "profile": profile_name,
        "constrained": method.constrained,
        "external": external,
        "certified_acc": _curve(epsilons, certify["certified_accuracy"]),
        "robust_acc": _curve(attack["epsilons"], attack["robust_accuracy"]),
        "per_attack_robust_acc": per_attack,
        "points": {"certified": int(certify["points"]), "attacked": int(attack["n_points"])},
        "lipschitz": {
            "upper_whole_map": float(upper["whole_map"]),
            "upper_max_per_logit": float(upper["max_per_logit"]),
            "lower_whole_map": float(lower["whole_map"]),
            "lower_max_per_logit": float(lower["max_per_logit"]),
        },
        "verification": {"status": status, "failures": list(verify.get("failures", []))},
        "train_seconds": None if train is None else float(train["timing"]["train_seconds"]),
        "peak_memory_mb": None if train is None else float(train["peak_memory_mb"]["process_rss"]),
        "parameter_count": int(train["parameter_count"]) if train is not None else int(certify.get("parameter_count", 1)),
        "environment": dict((train or certify).get("environment", {}))
        | {"attack_precision": attack_precision, "attack_compiled": bool(attack.get("compiled", False))},
    }
    validate_entry(entry)
    return entry


def external_entries_dir(profile: Profile) -> Path:
    """Where ``lipbench evaluate`` puts entries of externally trained checkpoints (git-tracked,
    a dependency of the report stage)."""
    return profile.path_of("metrics") / "external"


def collect_entries(profile: Profile) -> list[dict[str, Any]]:
    """Entries of every trained model of the profile, plus validated external entries."""
    from lipbench.evaluate.layout import STAGES
    from lipbench.evaluate.settings import evaluation_settings
    from lipbench.report.inputs import ModelKey, read_stage, read_train, stage_summary
    from lipbench.train import config_from_profile

    entries = []
    for dataset in profile.datasets:
        headline = evaluation_settings(profile, dataset).headline_eps
        stages = {stage: read_stage(profile, stage, dataset) for stage in STAGES}
        for model in profile.models:
            for seed in profile.seeds:
                key = ModelKey(dataset, model, seed)
                config = config_from_profile(profile, dataset, model, seed)
                train = read_train(profile, key)
                summaries = {stage: stage_summary(stages[stage], key) for stage in stages}
                entries.append(
                    build_entry(
                        profile.name,
                        dataset,
                        model,
                        seed,
                        config.method,
                        config.architecture,
                        headline,
                        train,
                        summaries["certify"],
                        summaries["attack"],
                        summaries["verify"],
                    )
                )
    folder = external_entries_dir(profile)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        entry = read_json(path)
        try:
            validate_entry(entry)
        except LeaderboardEntryError as error:
            raise LeaderboardEntryError(f"{path}: {error}") from None
        entries.append(entry)
    return entries


def _sort_key(entry: Mapping[str, Any]) -> tuple:
    certified = _at(entry["certified_acc"], entry["eps"])
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


_COLUMNS = (
    "rank",
    "model",
    "method",
    "architecture",
    "clean",
    "certified @eps",
    "AutoAttack @eps",
    "all attacks @eps",
    "L upper (map / logit)",
    "L lower",
    "verification",
    "train s",
    "params",
)


def _row(position: int, entry: Mapping[str, Any]) -> list[str]:
    eps = entry["eps"]
    lipschitz = entry["lipschitz"]
    status = entry["verification"]["status"]
    return [
        str(position),
        f"{entry['model']} (seed {entry['seed']})",
        entry["name"],
        entry["architecture"],
        _fmt(entry["clean_acc"]),
        _fmt(_at(entry["certified_acc"], eps)),
        _fmt(entry["autoattack_acc"]),
        _fmt(_at(entry["robust_acc"], eps)),
        f"{lipschitz['upper_whole_map']:.4g} / {lipschitz['upper_max_per_logit']:.4g}",
        f"{lipschitz['lower_whole_map']:.4g}",
        "verified" if status == "verified" else "**FAILED**",
        _fmt(entry["train_seconds"], 1),
        str(entry["parameter_count"]),
    ]


def _markdown(ranked: Mapping[str, list[Mapping[str, Any]]], profile: str) -> str:
    lines = [
        f"# lipbench leaderboard ({profile} profile)",
        "",
        "Ranked per dataset: verified entries first, then certified accuracy at the headline eps, then "
        "AutoAttack accuracy. L2 threat model; accuracies are fractions.",
        "",
    ]
    for dataset, entries in ranked.items():
        lines += [
            f"## {dataset} (headline eps = {entries[0]['eps']:g})",
            "",
            "| " + " | ".join(_COLUMNS) + " |",
            "|" + "---|" * len(_COLUMNS),
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
        "<p>Ranked per dataset: verified entries first, then certified accuracy at the headline eps, then AutoAttack "
        "accuracy. Rows in red failed verification and are never ranked above verified ones.</p>",
    ]
    for dataset, entries in ranked.items():
        parts.append(f"<h2>{html.escape(dataset)} (headline eps = {entries[0]['eps']:g})</h2><table><tr>")
        parts += [f"<th>{html.escape(column)}</th>" for column in _COLUMNS]
        parts.append("</tr>")
        for position, entry in enumerate(entries, start=1):
            failed = entry["verification"]["status"] != "verified"
            cells = [cell.replace("**", "") for cell in _row(position, entry)]
            title = html.escape(entry["footnote"], quote=True)
            parts.append(f"<tr class='{'failed' if failed else 'ok'}' title='{title}'>")
            parts += [f"<td>{html.escape(cell)}</td>" for cell in cells]
            parts.append("</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_leaderboard(profile: Profile, out_dir: Path) -> dict[str, Path]:
    """Write ``leaderboard.json``, ``leaderboard.md`` and ``leaderboard.html`` into ``out_dir``."""
    ranked = rank(collect_entries(profile))
    paths = {kind: out_dir / f"leaderboard.{kind}" for kind in ("json", "md", "html")}
    write_json_atomic(paths["json"], {"profile": profile.name, "datasets": ranked})
    write_text_atomic(paths["md"], _markdown(ranked, profile.name))
    write_text_atomic(paths["html"], _html(ranked, profile.name))
    return paths
