"""Published numbers to show beside ours: ``reference.csv`` (shipped) or a CSV of the same columns.

Columns: ``setting, dataset, model, optimizer, metric, value, std, source``. Values are in the units the report
shows (accuracy in percent, perplexity as is); ``std`` is empty for single runs; ``metric`` names the number
like summary.json does (``best_test_acc``, ``test_ppl``, ...).

Matching, kept simple on purpose: a reference row belongs to a table row when ``dataset``, ``model`` and
``optimizer`` are equal and, for settings that fix the depth, the run's ``model.num_layers`` (from its
``config.yaml``) equals that depth. The depth of a setting is the ``N`` in a name ending ``Nlayer``
(``awd_lstm_2layer`` -> 2), or listed in :data:`SETTING_LAYERS` (Zaremba et al.'s small LSTM has 2 layers).
Runs without a recorded ``num_layers`` never match a setting that fixes one, and reduced-scale runs
(``reduced_scale: true``, the cpu presets) match nothing: the published numbers are for the full protocol.
"""

from __future__ import annotations

import importlib.resources
import io
import re
from pathlib import Path

import pandas as pd

from .collect import ReportError

__all__ = ["COLUMNS", "SETTING_LAYERS", "load_reference", "match_reference", "setting_layers"]

COLUMNS = ["setting", "dataset", "model", "optimizer", "metric", "value", "std", "source"]
SETTING_LAYERS = {"zaremba_small": 2}


def load_reference(path: str | Path | None = None) -> pd.DataFrame:
    """The reference table at ``path``, or the shipped ``reference.csv`` when ``path`` is None."""
    try:
        if path is None:
            text = importlib.resources.files("xgrad.report").joinpath("reference.csv").read_text(encoding="utf-8")
            where = "the shipped reference.csv"
        else:
            text, where = Path(path).read_text(encoding="utf-8"), str(path)
        table = pd.read_csv(
            io.StringIO(text),
            dtype={"setting": str, "dataset": str, "model": str, "optimizer": str, "metric": str, "source": str},
        )
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ReportError(f"cannot read reference table {path}: {e}") from e
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ReportError(f"{where}: reference table lacks column(s) {', '.join(missing)} (needs {', '.join(COLUMNS)})")
    table["value"] = pd.to_numeric(table["value"], errors="coerce")
    table["std"] = pd.to_numeric(table["std"], errors="coerce")
    return table[COLUMNS]


def setting_layers(setting: str) -> int | None:
    """The number of layers a reference setting fixes, or None when it fixes none."""
    if setting in SETTING_LAYERS:
        return SETTING_LAYERS[setting]
    found = re.search(r"(\d+)[_-]?layers?$", setting)
    return int(found.group(1)) if found else None


def match_reference(
    reference: pd.DataFrame, dataset: str, model: str, optimizer: str, num_layers: int | None
) -> pd.DataFrame:
    """The reference rows for one of our (dataset, model, optimizer[, num_layers]) rows."""
    rows = reference[
        (reference["dataset"].str.lower() == dataset.lower())
        & (reference["model"].str.lower() == model.lower())
        & (reference["optimizer"].str.lower() == optimizer.lower())
    ]
    keep = pd.Series([setting_layers(s) in (None, num_layers) for s in rows["setting"]], index=rows.index, dtype=bool)
    return rows[keep]
