"""The end of a multirun: one screen saying how many jobs completed, diverged or failed, and where to look."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

__all__ = ["SweepSummary", "summarize_sweep"]


def summarize_sweep(sweep_dir: Path, since: float = 0.0) -> tuple[Counter, list[tuple[Path, dict[str, Any]]]]:
    """Count the statuses of the runs under ``sweep_dir`` launched since ``since`` (a timestamp).

    Returns the counts and the runs that did not complete (with their summaries).
    """
    counts: Counter = Counter()
    problems = []
    for path in sorted(sweep_dir.rglob("summary.json")):
        if path.stat().st_mtime < since:
            continue
        try:
            summary = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            summary = None
        if not isinstance(summary, dict):
            summary = {"status": "unreadable"}
        status = summary.get("status", "unknown")
        counts[status] += 1
        if status != "completed":
            problems.append((path.parent, summary))
    return counts, problems


class SweepSummary(Callback):
    """Hydra callback: print the sweep's outcome and exit non-zero if a job failed."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - 1.0  # file times can be coarser than the clock

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        counts, problems = summarize_sweep(sweep_dir, since=self.started)
        total = sum(counts.values())
        print(f"\nsweep {sweep_dir}: {total} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        for folder, summary in problems:
            error = summary.get("error", "")
            print(f"  {summary.get('status', '?'):<10} {folder}" + (f"\n             {error}" if error else ""))
        print(f"results: {sweep_dir} (python -m xgrad.report {sweep_dir})")
        if counts.get("failed", 0) or counts.get("unreadable", 0):
            sys.exit(1)
