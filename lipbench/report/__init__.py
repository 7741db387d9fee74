"""The report stage: figures (from the notebooks in ``reports/notebooks``), tables, the
leaderboard and an ``index.html`` for a profile, read from the pipeline's outputs only.

Kept light: import :mod:`lipbench.report.build` (``build_report``) for the stage itself.
"""

from __future__ import annotations

__all__: list[str] = []
