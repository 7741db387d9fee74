"""Building the tables and the leaderboard reads summaries only: no torch, matplotlib,
seaborn or foolbox is imported (they cost seconds per process and are not needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "matplotlib", "seaborn", "foolbox")

SCRIPT = """
import json, sys
from lipbench.profiles import load_profile
from lipbench.report.inputs import read_inputs
from lipbench.report.leaderboard import collect_entries
from lipbench.report.tables import all_tables
inputs = read_inputs(load_profile(sys.argv[1]))
tables = [table.markdown() for table in all_tables(inputs)]
entries = collect_entries(inputs)
heavy = sorted(m for m in sys.modules if m.split('.')[0] in %r)
print(json.dumps({"tables": len(tables), "entries": len(entries), "heavy": heavy}))
"""


def test_tables_and_leaderboard_import_no_heavy_library(fixture_params: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT % (HEAVY,), str(fixture_params)], capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout)
    assert report["tables"] == 6 and report["entries"] == 6  # robustness x2, cost, lipschitz, explain x2
    assert report["heavy"] == []
