"""Is a setting long enough to rank optimizers? Kendall's tau between epochs and between seeds.

A reduced setting (few epochs, a data subset) is only worth running if it orders the optimizers the way a longer
run of it would. This measures that from the runs themselves: per prediction arm, the optimizers are ranked by
the mean validation metric (test when a run has no validation split) at every epoch; Kendall's tau of each
epoch's ranking against the last epoch's says whether the order has settled, and tau between the seeds' own
last-epoch rankings says whether one seed would have given the same order.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats

from .collect import Run
from .figures import metric_curves
from .labels import higher_is_better, metric_label
from .tables import Table, row_label

__all__ = ["STABLE_TAU", "kendall_tau", "ranking_stability", "ranking_table"]

STABLE_TAU = 0.8  # with 5 optimizers: at most one adjacent pair swapped


def kendall_tau(a: pd.Series, b: pd.Series) -> float:
    """Kendall's tau-b between two scorings of the same items (index = item); NaN with fewer than 3 in common."""
    both = pd.concat([a, b], axis=1, join="inner").dropna()
    if len(both) < 3 or both.nunique().min() < 2:  # a constant scoring ranks nothing (scipy would warn)
        return math.nan
    return float(stats.kendalltau(both.iloc[:, 0], both.iloc[:, 1]).statistic)


def _scores(runs: list[Run], rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """(epoch, seed) x item table of the ranking metric, oriented so that higher is better."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    scores = {}
    for item, done in rows[rows["status"] == "completed"].groupby("item"):
        validated = all(f"val_{metric}" in runs[i].metrics.columns for i in done["run"])
        curves = metric_curves(runs, done, f"{'val' if validated else 'test'}_{metric}", sign)  # epoch x seed
        if not curves.empty:
            scores[item] = curves.rename_axis(index="epoch", columns="seed").unstack().swaplevel().sort_index()
    return pd.DataFrame(scores)


def ranking_stability(runs: list[Run], sub: pd.DataFrame) -> pd.DataFrame:
    """Per prediction arm of one setting (``sub``, with ``variant``): the last epoch's order and the taus.

    One row per arm (``steps`` 0 = without prediction) with at least 3 optimizers: ``order`` (best first, mean over
    seeds at the last epoch), ``tau_epoch_<e>`` (ranking by the seed mean at epoch e against the last epoch's),
    ``tau_seeds_mean`` and ``tau_seeds_min`` over every pair of seeds' last-epoch rankings, ``epochs``, ``seeds``.
    """
    if sub.empty:
        return pd.DataFrame()
    metric = sub["metric"].iloc[0]
    sub = sub.assign(item=[row_label(o, v) for o, v in zip(sub["optimizer"], sub["variant"])])
    sub = sub.assign(steps=np.where(sub["predict"], sub["steps"], 0.0))
    rows = []
    for steps, arm in sorted(sub.groupby("steps"), key=lambda item: item[0]):
        scores = _scores(runs, arm, metric)
        if scores.empty or scores.shape[1] < 3:
            continue
        means = scores.groupby(level="epoch").mean()
        last = int(means.index.max())
        row = {"steps": float(steps), "epochs": last, "seeds": scores.index.get_level_values("seed").nunique()}
        row["order"] = " > ".join(means.loc[last].dropna().sort_values(ascending=False).index)
        for epoch in means.index[:-1]:
            row[f"tau_epoch_{int(epoch)}"] = kendall_tau(means.loc[epoch], means.loc[last])
        final = scores.xs(last, level="epoch")
        taus = [kendall_tau(final.loc[a], final.loc[b]) for a, b in itertools.combinations(final.index, 2)]
        taus = [t for t in taus if not math.isnan(t)]
        row["tau_seeds_mean"] = float(np.mean(taus)) if taus else math.nan
        row["tau_seeds_min"] = float(np.min(taus)) if taus else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value: float) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.2f}"


def ranking_table(numbers: pd.DataFrame, metric: str, title: str) -> Table:
    """Presentation of :func:`ranking_stability`; the caption states the rule it is read by."""
    epochs = sorted(int(c.removeprefix("tau_epoch_")) for c in numbers.columns if c.startswith("tau_epoch_"))
    headers = ["arm", "order at the last epoch (best first)", *[f"τ ep {e}" for e in epochs], "τ seeds mean (min)"]
    cells, bold = [], []
    for row in numbers.itertuples():
        arm = "without prediction" if row.steps == 0 else f"with prediction (s={row.steps:g})"
        taus = [_fmt(getattr(row, f"tau_epoch_{e}", math.nan)) for e in epochs]
        seeds = f"{_fmt(row.tau_seeds_mean)} ({_fmt(row.tau_seeds_min)}), {row.seeds} seeds"
        cells.append([arm, row.order, *taus, seeds])
        bold.append([False] * len(headers))
    caption = (
        f"{title}: is the setting long enough to rank the optimizers? Each arm's optimizers are ranked by the mean "
        f"{metric_label(metric, 'validation')} over seeds (test where a run has no validation split). τ ep e = "
        "Kendall's tau between the ranking at epoch e and at the last epoch; τ seeds = tau between the seeds' own "
        f"last-epoch rankings, mean and min over seed pairs. Read as stable when tau of the second-last epoch and "
        f"the seeds' mean are both at least {STABLE_TAU:g} (with 5 optimizers: at most one adjacent pair swapped). "
        "Completed runs only: a diverged run is left out (an optimizer whose seeds all diverged is not ranked)."
    )
    return Table(headers, cells, bold, caption, align="ll" + "r" * (len(epochs) + 1))
