"""Figures per setting: convergence (training loss and test accuracy or perplexity against epoch) and, for runs
that measured it, the prediction error and cosine against epoch.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot, no global state, Agg rendering),
so they can be made in tests and in parallel with anything else.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: the report only writes files

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from xgrad.rundir import atomic_write

from .collect import Run
from .labels import metric_label, optimizer_rank, pretty_optimizer

__all__ = ["convergence_figure", "metric_curves", "prediction_error_figure", "save_figure", "series_label"]

# Sized for a two-column paper figure (7 in wide) with fonts that stay readable when printed at that size.
FIGSIZE = (7.0, 3.6)
STYLE = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
}
# Fixed colours per optimizer (the same in every figure); the pair most often compared, SGDM and AdamW, contrast.
COLOURS = {
    "sgd": "#7f7f7f",
    "sgdm": "#1f77b4",
    "adam": "#2ca02c",
    "adamw": "#d62728",
    "adabelief": "#9467bd",
    "adam3": "#ff7f0e",
    "nadam": "#8c564b",
    "radam": "#e377c2",
    "adamax": "#bcbd22",
    "rmsprop": "#17becf",
    "adagrad": "#393b79",
    "adafactor": "#8c6d31",
    "muon": "#000000",
    "lion": "#637939",
    "soap": "#843c39",
    "adan": "#7b4173",
}
SPARE = ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5"]  # for optimizers without a fixed colour
PALETTE = list(COLOURS.values()) + SPARE
WITHOUT = "--"  # dashed: without prediction
WITH_STYLES = ["-", "-.", ":"]  # solid for the (first) prediction horizon; others if several were run


def series_label(
    optimizer: str, variant: str, predict: bool, steps: float, n: int, diverged: int, several_steps: bool
) -> str:
    """Legend text, e.g. ``SGDM, with weight prediction (2 seeds, 1 diverged)``."""
    name = pretty_optimizer(optimizer) + (f" ({variant})" if variant else "")
    what = "without weight prediction"
    if predict:
        what = "with weight prediction" + (f", s={steps:g}" if several_steps or steps != 1 else "")
    counts = f"{n} seed{'s' if n != 1 else ''}" + (f", {diverged} diverged" if diverged else "")
    return f"{name}, {what} ({counts})"


def _colours(sub: pd.DataFrame) -> dict[tuple[str, str], str]:
    """One colour per optimizer, the same in every figure; per (optimizer, variant) when variants exist."""
    pairs = set(zip(sub["optimizer"], sub["variant"]))
    keys = sorted(pairs, key=lambda k: (optimizer_rank(k[0]), k[1]))
    if all(v == "" for _, v in keys):
        extra = sorted(o for o, _ in keys if o not in COLOURS)
        return {(o, v): COLOURS.get(o) or SPARE[extra.index(o) % len(SPARE)] for o, v in keys}
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def metric_curves(runs: list[Run], rows: pd.DataFrame, column: str, scale: float) -> pd.DataFrame:
    """Epoch x seed table of one metrics.csv column (non-finite values as NaN)."""
    curves = {}
    for row in rows.itertuples():
        metrics = runs[row.run].metrics
        if column in metrics.columns and "epoch" in metrics.columns and len(metrics):
            curves[row.seed] = metrics.set_index("epoch")[column].astype(float) * scale
    if not curves:
        return pd.DataFrame()
    return pd.DataFrame(curves).replace([np.inf, -np.inf], np.nan).sort_index()


def _series(sub: pd.DataFrame) -> list[tuple[tuple[str, str, bool, float], pd.DataFrame]]:
    """The (optimizer, variant, predict, steps) groups of a setting, optimizers in README order, without first."""
    groups = sub.groupby(["optimizer", "variant", "predict", "steps"], sort=False)
    return sorted(groups, key=lambda item: (optimizer_rank(item[0][0]), *item[0][1:]))


def _legend_columns(labels: list[str], colours: int) -> int:
    """One column per colour when the labels fit the figure's width, fewer otherwise (estimated from lengths)."""
    points_per_column = 0.5 * STYLE["legend.fontsize"] * max(map(len, labels), default=1) + 32  # text + handle
    fitting = int(FIGSIZE[0] * 72 * 0.97 // points_per_column)
    return max(1, min(colours, fitting))


def convergence_figure(runs: list[Run], sub: pd.DataFrame, title: str) -> Figure:
    """Two panels for one setting: (a) training loss, (b) test accuracy % (or test perplexity, log scale).

    ``sub`` is the runs frame of the setting, with a ``variant`` column. Each (optimizer, variant, prediction)
    series is the mean over completed seeds with a ±1 std band; diverged seeds are drawn thin, ending in ×.
    """
    metric = sub["metric"].iloc[0]
    scale = 100.0 if metric == "acc" else 1.0
    steps_run = sorted(sub.loc[sub["predict"], "steps"].unique())
    colours = _colours(sub)
    plan = []  # (rows, colour, style, label) per series, known before drawing so the legend can be sized
    for (optimizer, variant, predict, steps), rows in _series(sub):
        done, diverged = (rows["status"] == "completed").sum(), (rows["status"] == "diverged").sum()
        label = series_label(optimizer, variant, predict, steps, done, diverged, len(steps_run) > 1)
        style = WITH_STYLES[steps_run.index(steps) % len(WITH_STYLES)] if predict else WITHOUT
        plan.append((rows, colours[(optimizer, variant)], style, label))
    any_diverged = bool((sub["status"] == "diverged").any())
    labels = [p[3] for p in plan] + (["× = a diverged seed (stopped)"] if any_diverged else [])
    ncol = _legend_columns(labels, len(set(colours.values())))
    legend_rows = -(-len(labels) // ncol)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(FIGSIZE[0], FIGSIZE[1] + 0.16 * legend_rows), layout="constrained")
        ax_loss, ax_metric = fig.subplots(1, 2)
        for rows, colour, style, label in plan:
            done, diverged = rows[rows["status"] == "completed"], rows[rows["status"] == "diverged"]
            for ax, column, factor in ((ax_loss, "train_loss", 1.0), (ax_metric, f"test_{metric}", scale)):
                labelled = _plot_mean(ax, metric_curves(runs, done, column, factor), colour, style, label)
                _plot_diverged(
                    ax, metric_curves(runs, diverged, column, factor), colour, style, None if labelled else label
                )
        _decorate(fig, ax_loss, ax_metric, metric, title, any_diverged, ncol)
    return fig


def prediction_error_figure(runs: list[Run], sub: pd.DataFrame, title: str) -> Figure | None:
    """Two panels for one setting's runs with prediction: (a) the relative prediction error
    ``||theta_hat - theta_reached|| / ||theta_reached - theta_t||`` (log scale), (b) the cosine between predicted
    and actual displacement, per epoch (metrics.csv's ``prediction_error`` and ``prediction_cosine``, means over
    the epoch's sampled steps; mean ± 1 std over completed seeds). None when no run measured them."""
    predicted = sub[sub["predict"]]
    measured = [r for r in predicted.itertuples() if "prediction_error" in runs[r.run].metrics.columns]
    if not measured:
        return None
    predicted = predicted.loc[[r.Index for r in measured]]
    steps_run = sorted(predicted["steps"].unique())
    colours = _colours(sub)
    with matplotlib.rc_context(STYLE):
        plan = []
        for (optimizer, variant, _, steps), rows in _series(predicted):
            done = rows[rows["status"] == "completed"]
            label = series_label(optimizer, variant, True, steps, len(done), 0, len(steps_run) > 1)
            style = WITH_STYLES[steps_run.index(steps) % len(WITH_STYLES)]
            plan.append((done, colours[(optimizer, variant)], style, label))
        ncol = _legend_columns([p[3] for p in plan], len({p[1] for p in plan}))
        fig = Figure(figsize=(FIGSIZE[0], FIGSIZE[1] + 0.16 * -(-len(plan) // ncol)), layout="constrained")
        ax_error, ax_cosine = fig.subplots(1, 2)
        for rows, colour, style, label in plan:
            _plot_mean(ax_error, metric_curves(runs, rows, "prediction_error", 1.0), colour, style, label)
            _plot_mean(ax_cosine, metric_curves(runs, rows, "prediction_cosine", 1.0), colour, style, label)
        ax_error.set(title="(a) relative prediction error", xlabel="epoch",
                     ylabel="||θ̂ − θ_reached|| / ||θ_reached − θ_t||")  # fmt: skip
        if ax_error.has_data():
            _plain_log_axis(ax_error)
        ax_cosine.set(title="(b) cosine(predicted, actual move)", xlabel="epoch", ylabel="cosine")
        for ax in (ax_error, ax_cosine):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, labels = ax_error.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False)
        fig.suptitle(f"{title}\nepoch means over sampled steps, then over seeds; band = ±1 std", fontsize=9)
    return fig


def _plot_mean(ax, curves: pd.DataFrame, colour: str, style: str, label: str) -> bool:
    """Mean line and ±1 std band of the completed seeds; False when there are none."""
    if curves.empty:
        return False
    mean = curves.mean(axis=1)
    marker = "o" if len(mean) <= 30 else None  # short runs: show where the epochs are
    ax.plot(
        mean.index,
        mean.to_numpy(),
        color=colour,
        linestyle=style,
        linewidth=1.5,
        marker=marker,
        markersize=3,
        label=label,
    )
    if curves.shape[1] >= 2:
        std = curves.std(axis=1, ddof=1)
        ax.fill_between(
            mean.index, (mean - std).to_numpy(), (mean + std).to_numpy(), color=colour, alpha=0.15, linewidth=0
        )
    return True


def _plot_diverged(ax, curves: pd.DataFrame, colour: str, style: str, label: str | None) -> None:
    """Each diverged seed as a thin line up to its last finite value, marked ×; the first carries ``label``
    when the series has no completed seed (so it still appears in the legend)."""
    for seed in curves.columns:
        curve = curves[seed].dropna()
        if curve.empty:
            continue
        x, y = curve.index, curve.to_numpy()
        ax.plot(x, y, color=colour, linestyle=style, linewidth=0.8, alpha=0.6, label=label or f"_diverged {seed}")
        ax.plot(x[-1:], y[-1:], color=colour, marker="x", markersize=6, linestyle="none", label="_diverged")
        label = None


def _decorate(fig: Figure, ax_loss, ax_metric, metric: str, title: str, any_diverged: bool, ncol: int) -> None:
    loss = "training loss (cross-entropy" + (" per token)" if metric == "ppl" else ")")
    ax_loss.set(title="(a) training loss", xlabel="epoch", ylabel=loss)
    ylabel = metric_label(metric) + (" (log scale)" if metric == "ppl" else "")
    ax_metric.set(title=f"(b) {metric_label(metric).replace(' (%)', '')}", xlabel="epoch", ylabel=ylabel)
    if metric == "ppl":
        _plain_log_axis(ax_metric)
    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = ax_loss.get_legend_handles_labels()
    if any_diverged:
        handles.append(Line2D([], [], color="grey", marker="x", linestyle="none"))
        labels.append("× = a diverged seed (stopped)")
    # Filled column by column: with one column per colour, each optimizer's lines sit together.
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False)
    fig.suptitle(
        f"{title}\nmean over seeds, shaded band = ±1 std; dashed = without weight prediction, solid = with",
        fontsize=9,
    )


def _plain_log_axis(ax) -> None:
    """Log scale labelled with plain numbers (``150``, not ``1.5×10²``); minor ticks too within one decade."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    if high / low < 10:  # within a decade, label 1, 1.5, 2, 3, 4, 5, 7 x 10^k so a few numbers show
        ax.yaxis.set_minor_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)))
        ax.yaxis.set_minor_formatter(plain)
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` (200 dpi) and ``stem.pdf`` atomically; return both paths."""
    paths = []
    # No creation date in the PDF: a report rebuilt from the same runs is byte-identical (diffs show real changes).
    for fmt, extra in (("png", {"dpi": 200}), ("pdf", {"metadata": {"CreationDate": None}})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, **extra)  # render first, so a failure leaves no file behind
        data = buffer.getvalue()
        path = stem.with_suffix(f".{fmt}")
        atomic_write(path, lambda f, data=data: f.write(data))
        paths.append(path)
    return paths
