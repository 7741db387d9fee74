"""The shape of lipbench's code: imports flow one way between its floors, and no file or
function outgrows what a reader can hold (guide: files <= ~400 lines, functions <= ~60)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lipbench"

#: Floors, lowest first: a module may import lipbench modules of its own floor or below.
FLOORS: list[set[str]] = [
    {
        "lipbench",
        "lipbench.registry",
        "lipbench.io",
        "lipbench.profiles",
        "lipbench.environment",
        "lipbench.devices",
        "lipbench.progress",
        "lipbench.runs",
        "lipbench.records",
        "lipbench.summaries",
        "lipbench.arrays",
        "lipbench.curves",
        "lipbench.entries",
    },
    {"lipbench.nn"},
    {"lipbench.losses", "lipbench.losses_armor", "lipbench.data"},
    {"lipbench.methods"},
    {"lipbench.train"},
    {"lipbench.evaluate"},
    {"lipbench.explain"},
    {"lipbench.report"},
    {"lipbench.launch"},
    {"lipbench.cli"},
]
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
#: Functions allowed to be longer, each with the reason (none today).
LONG_FUNCTIONS: dict[str, str] = {}


def _modules() -> list[tuple[str, Path]]:
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return modules


def floor(module: str) -> int:
    """The floor of a module: the deepest listed package or module it belongs to."""
    candidates = [
        (len(name), index)
        for index, names in enumerate(FLOORS)
        for name in names
        if module == name or module.startswith(name + ".")
    ]
    if not candidates:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS in {__file__}")
    return max(candidates)[1]


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """Every lipbench module imported anywhere in the file (functions included)."""
    found = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}" if base == "lipbench" else base) for alias in node.names]
    return [(line, name) for line, name in found if name == "lipbench" or name.startswith("lipbench.")]


def test_every_module_is_on_a_floor():
    for module, _ in _modules():
        floor(module)


def test_imports_flow_down_only():
    violations = []
    for module, path in _modules():
        for line, imported in _imports(path, module):
            if floor(imported) > floor(module):
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {imported} (a later layer)")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_an_upward_import(tmp_path):
    source = tmp_path / "loop.py"
    source.write_text("def f():\n    from lipbench.evaluate.certify import predictions\n")
    ((line, imported),) = _imports(source, "lipbench.train.loop")
    assert line == 2 and floor(imported) > floor("lipbench.train.loop")


@pytest.mark.parametrize("module, path", _modules(), ids=[module for module, _ in _modules()])
def test_files_and_functions_stay_small(module, path):
    assert len(path.read_text().splitlines()) <= MAX_FILE_LINES, f"{path} is over {MAX_FILE_LINES} lines"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{module}.{node.name}"
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES or name in LONG_FUNCTIONS, f"{name} is {length} lines"
