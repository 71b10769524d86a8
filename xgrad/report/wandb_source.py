"""Runs from a W&B project (``--wandb ENTITY/PROJECT``), converted to the same :class:`Run` records as folders.

The runner's W&B tracker logs every metrics.csv row (keyed by epoch) and attaches summary.json as the run
summary, so a W&B run carries the same information: its history becomes ``metrics``, its summary ``summary``
and its config ``config``. ``wandb`` is imported only here, so no account or package is needed otherwise.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .collect import Collection, ReportError, Run, Skipped, validate

__all__ = ["history_frame", "load_wandb"]


def _api() -> Any:
    try:
        import wandb
    except ImportError as e:
        raise ReportError("--wandb needs the wandb package: pip install 'xgrad[wandb]'") from e
    try:
        return wandb.Api()
    except Exception as e:  # no key, no network: say so instead of a traceback
        raise ReportError(f"--wandb: cannot connect to W&B ({type(e).__name__}: {e})") from e


def history_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """W&B history rows as metrics.csv would hold them: one row per epoch (the last logged wins), no ``_`` keys."""
    frame = pd.DataFrame(rows)
    if frame.empty or "epoch" not in frame.columns:
        return pd.DataFrame()
    frame = frame[[c for c in frame.columns if not str(c).startswith("_")]]
    frame = frame[frame["epoch"].notna()]
    # A resumed run may log an epoch twice; keep the latest, as metrics.csv does.
    return frame.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def load_wandb(path: str, api: Any = None) -> Collection:
    """Every run of the W&B project ``path`` (``entity/project``), validated like a run folder."""
    api = api if api is not None else _api()
    try:
        wandb_runs = list(api.runs(path))
    except Exception as e:
        raise ReportError(f"--wandb {path}: cannot list its runs ({type(e).__name__}: {e})") from e
    collection = Collection()
    for wandb_run in wandb_runs:
        source = f"wandb:{path}/{wandb_run.id}"
        try:
            summary = dict(wandb_run.summary.items())
            config = dict(wandb_run.config)
            metrics = history_frame(list(wandb_run.scan_history()))
        except Exception as e:
            collection.skipped.append(Skipped(source, f"corrupt: cannot read the W&B run ({type(e).__name__}: {e})"))
            continue
        item = validate(source, summary, metrics, config, resolved=True)  # the run logged cfg resolved
        (collection.runs if isinstance(item, Run) else collection.skipped).append(item)
    return collection
