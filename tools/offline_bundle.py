"""Run pipeline stages on a machine that has PyTorch but no internet and no DVC (an
air-gapped GPU host), then record the results here as if `dvc repro` had produced them.

    # here (a checkout with .venv; the mirror holds the datasets' archives):
    LIPBENCH_DATA_MIRROR=../shared/data .venv/bin/python tools/offline_bundle.py make pipelines/mnist/dvc.yaml
    # copy the checkout, .carry/ included, to the host; there, with its own python3 + torch:
    python3 tools/offline_bundle.py run --jobs 4 --out /some/folder [--deadline S] [--resume F] [--part-mib M]
    # bring /some/folder back; here:
    .venv/bin/python tools/offline_bundle.py import /some/folder

The work is in lipbench/launch/bundle.py (plan from DVC's stage graph, the launcher's runner,
the archive); this script only runs it from the checkout: the host has no lipbench install,
so the checkout (and, for `run`, the packages carried in .carry/site) go on PYTHONPATH for it
and for the jobs it starts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    paths = [str(ROOT / ".carry" / "site")] if argv[:1] == ["run"] else []
    paths += [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    environment = dict(os.environ) | {"PYTHONPATH": os.pathsep.join(paths)}
    command = [sys.executable, "-m", "lipbench.launch.bundle", "--root", str(ROOT), *argv]
    os.execve(sys.executable, command, environment)


if __name__ == "__main__":
    main(sys.argv[1:])
