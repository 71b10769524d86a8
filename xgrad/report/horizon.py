"""The prediction horizon s: per optimizer, every s it ran side by side with its baseline (s = 0).

Where a setting's runs predicted with several horizons (e.g. s in {0.5, 1, 2, 4}), one table shows per s
the final test metric, its paired difference from the baseline (the numbers of that s's comparison table) and how
well the prediction matched where the weights went: the relative prediction error and the cosine between the
predicted and the actual move, each run's mean over its epochs, then mean ± std over the seeds.
"""

from __future__ import annotations

import math

import pandas as pd

from xgrad.tune import run_lr

from .collect import Run
from .figures import metric_curves
from .labels import fmt_mean_std, metric_label
from .tables import Table, diff_cell, mean_std, row_groups, row_label

__all__ = ["horizon_frame", "horizon_table"]


def _seed_means(runs: list[Run], rows: pd.DataFrame, column: str) -> pd.Series:
    """Per completed seed: the mean over epochs of one metrics.csv column (empty when no run measured it)."""
    curves = metric_curves(runs, rows[rows["status"] == "completed"], column, 1.0)
    return curves.mean(axis=0).dropna() if not curves.empty else pd.Series(dtype=float)


def _lr(runs: list[Run], rows: pd.DataFrame) -> float:
    """The lr the runs of ``rows`` share (tuned arms each have their own); NaN when they differ or have none."""
    lrs = {run_lr(runs[i].config) for i in rows["run"]}
    return lrs.pop() if len(lrs) == 1 and None not in lrs else math.nan


def _comparison_row(comparisons: dict[float, pd.DataFrame], s: float, optimizer: str, variant: str) -> pd.Series:
    numbers = comparisons.get(s, pd.DataFrame(columns=["optimizer", "variant"]))
    found = numbers[(numbers["optimizer"] == optimizer) & (numbers["variant"] == variant)]
    if found.empty:
        raise ValueError(f"no comparison row for {optimizer} ({variant or 'no variant'}) at s={s:g}")
    return found.iloc[0]


def horizon_frame(runs: list[Run], sub: pd.DataFrame, comparisons: dict[float, pd.DataFrame]) -> pd.DataFrame:
    """One row per (optimizer, variant, s) of the rows of ``sub`` that predicted with two horizons or more.

    ``comparisons`` maps each s to :func:`~xgrad.report.tables.comparison` of that s; s = 0 is the baseline row.
    """
    out = []
    for (optimizer, variant), group in row_groups(sub):
        steps = sorted(group.loc[group["predict"], "steps"].unique())
        if len(steps) < 2:
            continue
        rows = {s: _comparison_row(comparisons, s, optimizer, variant) for s in steps}
        first = rows[steps[0]]
        out.append({
            "optimizer": optimizer, "variant": variant, "steps": 0.0, "lr": _lr(runs, group[~group["predict"]]),
            "n": int(first["n_without"]), "diverged": int(first["diverged_without"]),
            "final_mean": first["final_without_mean"], "final_std": first["final_without_std"],
        })  # fmt: skip
        for s, row in rows.items():
            with_ = group[group["predict"] & (group["steps"] == s)]
            error, cosine = (mean_std(_seed_means(runs, with_, c)) for c in ("prediction_error", "prediction_cosine"))
            out.append({
                "optimizer": optimizer, "variant": variant, "steps": float(s), "lr": _lr(runs, with_),
                "n": int(row["n_with"]), "diverged": int(row["diverged_with"]),
                "final_mean": row["final_with_mean"], "final_std": row["final_with_std"],
                "final_diff": row["final_diff"], "final_ci_low": row["final_ci_low"],
                "final_ci_high": row["final_ci_high"], "final_p_holm": row["final_p_holm"],
                "final_verdict": row["final_verdict"],
                "error_mean": error[0], "error_std": error[1], "cosine_mean": cosine[0], "cosine_std": cosine[1],
            })  # fmt: skip
    return pd.DataFrame(out)


def horizon_table(frame: pd.DataFrame, metric: str, title: str) -> Table:
    """Presentation of :func:`horizon_frame`."""

    def number(value: float, style: str) -> str:
        return format(value, style) if isinstance(value, float) and math.isfinite(value) else "—"

    cells = []
    for r in frame.itertuples():
        baseline = r.steps == 0
        cells.append([
            row_label(r.optimizer, r.variant),
            "0 (without)" if baseline else f"{r.steps:g}",
            number(r.lr, "g"),
            f"{r.n}" + (f" ({r.diverged} diverged)" if r.diverged else ""),
            fmt_mean_std(r.final_mean, r.final_std),
            "" if baseline else diff_cell(r.final_diff, r.final_ci_low, r.final_ci_high),
            "" if baseline else number(r.final_p_holm, ".3f"),
            "" if baseline else r.final_verdict,
            "" if baseline else fmt_mean_std(r.error_mean, r.error_std, digits=3),
            "" if baseline else fmt_mean_std(r.cosine_mean, r.cosine_std, digits=3),
        ])  # fmt: skip
    headers = ["optimizer", "s", "lr", "seeds", f"final {metric_label(metric)}", "Δ vs without [95% CI]",
               "Holm p", "verdict", "prediction error", "cosine"]  # fmt: skip
    return Table(
        headers=headers,
        cells=cells,
        bold=[[False] * len(headers) for _ in cells],
        caption=(
            f"{title}: the prediction horizon s. final = last epoch, mean ± std over completed seeds; Δ, its paired "
            "95% interval, Holm p and verdict are those of the comparison table of that s (Holm over that table's "
            "rows; not adjusted across the horizons). prediction error = ||θ̂ − θ_reached|| / ||θ_reached − θ_t|| "
            "and cosine = cos(predicted, actual move), each run's mean over its epochs (sampled steps), then mean "
            "± std over the completed seeds that measured them. lr: each arm's own."
        ),
        align="llrrrlrlrr",
    )
