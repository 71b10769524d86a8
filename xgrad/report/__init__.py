"""``python -m xgrad.report``: paper figures and tables from finished run folders.

It reads only what the runner writes (``summary.json``, ``metrics.csv``, ``config.yaml``), optionally
runs from a W&B project, and writes convergence figures (PNG, PDF), comparison and cost tables (Markdown,
LaTeX, CSV) and an index ``README.md``. See :mod:`xgrad.report.cli` for the options.
"""

from .build import build_report
from .cli import main
from .collect import Collection, ReportError, Run, Skipped, collect, runs_frame

__all__ = ["Collection", "ReportError", "Run", "Skipped", "build_report", "collect", "main", "runs_frame"]
