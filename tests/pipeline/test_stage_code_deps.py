"""Every stage of dvc.yaml declares the lipbench code it runs: the modules its command imports
(and the scripts among its dependencies, the report's notebooks), at any depth and inside
functions too, each covered by one of its dependencies. A module it
runs but does not declare would let ``dvc repro`` call the stage up to date after a change that
alters its results."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from lipbench.cli.main import _COMMANDS

ROOT = Path(__file__).resolve().parents[2]
# the package marker (the version string, recorded by every stage's environment but no result)
# and the cli package's docstring: not code a stage's outputs depend on
EXEMPT = {"lipbench/__init__.py", "lipbench/cli/__init__.py"}


def _module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path) -> set[str]:
    """Every ``lipbench...`` module name that ``path`` imports, anywhere in the file."""
    package = path.relative_to(ROOT).parent.parts  # what a relative import of level 1 names
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] == "lipbench"}


def code_closure(*modules: str) -> set[str]:
    """The repository paths of every lipbench file that importing ``modules`` can run."""
    seen: set[Path] = set()
    pending = list(modules)
    while pending:
        name = pending.pop()
        path = _module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        pending += [".".join(parts[:end]) for end in range(1, len(parts))]  # its packages run first
        pending += sorted(_imported(path))
    return {path.relative_to(ROOT).as_posix() for path in seen}


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: body.get("do", body) for name, body in stages.items()}


def test_the_closure_follows_imports_inside_functions_and_through_packages():
    closure = code_closure("lipbench.cli.train")
    assert "lipbench/train/stage.py" in closure  # imported inside the command's function
    assert "lipbench/dvc_cache.py" in closure and "lipbench/data/base.py" in closure
    assert "lipbench/report/build.py" not in closure


def test_the_report_s_notebook_scripts_count_as_code_it_runs():
    scripts = sorted((ROOT / "reports" / "notebooks").glob("*.py"))
    assert scripts and "lipbench.report.inputs" in set().union(*map(_imported, scripts))


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_a_stage_declares_every_lipbench_module_its_command_runs(stage):
    body = _stages()[stage]
    command = body["cmd"].split()[1]
    module = _COMMANDS[command][0]
    declared = [dep.rstrip("/") for dep in body["deps"] if dep.startswith("lipbench")]
    scripts = [path for dep in body["deps"] if "$" not in dep for path in sorted(ROOT.joinpath(dep).rglob("*.py"))]
    imported_by_scripts = {
        name for script in scripts if not script.is_relative_to(ROOT / "lipbench") for name in _imported(script)
    }
    missing = sorted(
        path
        for path in code_closure(module, *imported_by_scripts) - EXEMPT
        if not any(path == dep or path.startswith(dep + "/") for dep in declared)
    )
    assert not missing, f"dvc.yaml stage {stage!r} runs but does not declare: {', '.join(missing)}"
