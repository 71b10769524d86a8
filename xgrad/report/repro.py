"""What a report keeps so that one of its runs can be re-run and checked: per-epoch metrics and configurations.

The report writes ``runs_epochs.csv`` (every epoch of every run it used: ``source``, ``seed`` and the run's
``metrics.csv`` columns) and ``runs_config.json`` (per run: its ``.hydra/config.yaml`` as composed, and its
overrides). ``scripts/reproduce.py`` re-runs one of them for one epoch and compares with :func:`compare`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from .collect import ReportError, Run

__all__ = ["CONFIGS", "EPOCHS", "NOT_COMPARED", "compare", "epochs_frame", "read_committed", "run_configs"]

EPOCHS, CONFIGS = "runs_epochs.csv", "runs_config.json"
# Columns that measure the machine, not the training: never compared.
NOT_COMPARED = ("epoch", "epoch_seconds", "samples_per_second", "tokens_per_second")


def epochs_frame(runs: list[Run], frame: pd.DataFrame) -> pd.DataFrame:
    """Every epoch of the runs in ``frame`` (the report's runs frame): source, seed, then metrics.csv's columns."""
    parts = []
    for row in frame.itertuples():
        metrics = runs[row.run].metrics
        if metrics.empty:
            continue
        parts.append(metrics.assign(source=row.source, seed=row.seed)[["source", "seed", *metrics.columns]])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["source", "seed", "epoch"])


def run_configs(runs: list[Run], frame: pd.DataFrame) -> str:
    """JSON text: per run source, its configuration and overrides (what a re-run needs)."""
    configs = {
        row.source: {"overrides": runs[row.run].summary.get("overrides", ""), "config": runs[row.run].config}
        for row in frame.itertuples()
        if runs[row.run].config
    }
    return json.dumps(configs, indent=1, sort_keys=True) + "\n"


def read_committed(report: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A report's per-epoch metrics and run configurations; :class:`ReportError` when it has none."""
    epochs, configs = report / EPOCHS, report / CONFIGS
    for path in (epochs, configs):
        if not path.is_file():
            raise ReportError(
                f"{path}: missing (a report written by this version of python -m xgrad.report has it; "
                "rebuild the report from its run folders)"
            )
    try:
        return pd.read_csv(epochs), json.loads(configs.read_text())
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise ReportError(f"{report}: unreadable {EPOCHS} or {CONFIGS} ({e})") from e


def compare(committed: dict[str, float], now: dict[str, float], rtol: float) -> pd.DataFrame:
    """Metric by metric: committed value, value now, difference, and whether it is within ``rtol`` (relative).

    Only the columns both have are compared, less the timing columns (:data:`NOT_COMPARED`). A value within
    ``rtol * max(|committed|, 1e-12)`` passes; NaN matches NaN (a diverged epoch reproduced).
    """
    rows = []
    for key in committed:
        if key in NOT_COMPARED or key not in now:
            continue
        try:
            a, b = float(committed[key]), float(now[key])
        except (TypeError, ValueError):
            continue
        diff = b - a
        same_nan = math.isnan(a) and math.isnan(b)
        ok = same_nan or (math.isfinite(diff) and abs(diff) <= rtol * max(abs(a), 1e-12))
        rows.append({"metric": key, "committed": a, "now": b, "difference": diff, "within": ok})
    return pd.DataFrame(rows, columns=["metric", "committed", "now", "difference", "within"])
