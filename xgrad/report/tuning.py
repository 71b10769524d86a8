"""Tuning studies in the report: which runs are final, the chosen lr per arm (table) and validation metric vs lr.

A study is a folder with ``tuning.json`` (written by ``python -m xgrad.tune``). Its runs at an arm's chosen lr are
that arm's final seeds: they enter the comparison tables and convergence figures like any run, their lr no longer
a variant (it is the arm's own). Its runs at the other lrs are tuning runs: they appear only here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from xgrad.errors import ConfigError
from xgrad.tune import STUDY_FILE, Study, fill_grid, read_study, run_lr

from .collect import ReportError, Run
from .figures import COLOURS, STYLE, WITH_STYLES, WITHOUT, _plain_log_axis  # one look for every log axis
from .labels import metric_label, optimizer_rank
from .labels import pretty_optimizer as pretty
from .tables import Table

__all__ = ["TunedStudy", "find_studies", "split_tuned", "tuning_figure", "tuning_frame", "tuning_table"]


@dataclass
class TunedStudy:
    """A study folder and its protocol, with the grid read back from its runs."""

    folder: Path
    study: Study


def find_studies(roots: list[Path]) -> list[TunedStudy]:
    """Every ``tuning.json`` under ``roots`` (the roots included), its grid filled from the runs beside it."""
    found, seen = [], set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob(STUDY_FILE)):
            folder = path.parent.resolve()
            if folder in seen:
                continue
            seen.add(folder)
            try:
                study = read_study(folder)
            except ConfigError as e:
                raise ReportError(str(e)) from e
            if study is not None:
                fill_grid(study, folder)
                found.append(TunedStudy(folder, study))
    return found


def _study_of(source: str, studies: list[TunedStudy]) -> TunedStudy | None:
    path = Path(source).resolve()
    return next((s for s in studies if path.is_relative_to(s.folder)), None)


def split_tuned(frame: pd.DataFrame, runs: list[Run], studies: list[TunedStudy]) -> tuple[pd.DataFrame, int]:
    """The runs frame with the tuning-only runs left out and tuned runs' lr out of their variant.

    A tuned run's variant names its study instead (``lr tuned: <study folder>``; dropped, like every override,
    when all runs of a setting share it), so a report of a study beside other runs of the same setting, or of two
    studies, never averages or pairs runs at different lrs in one row. Adds a ``tuned`` column. Returns the frame
    and the number of runs left out (tuning runs at lrs not chosen, and runs of arms whose lr is not chosen yet).
    """
    if frame.empty or not studies:
        return frame.assign(tuned=False) if not frame.empty else frame, 0
    keep, tuned, extras = [], [], []
    for row in frame.itertuples():
        found = _study_of(row.source, studies)
        if found is None:
            keep.append(True), tuned.append(False), extras.append(row.extra)
            continue
        arm = found.study.arm(row.optimizer, float(row.steps))
        lr = run_lr(runs[row.run].config)
        chosen = arm.selection.lr if arm is not None and arm.selection is not None else None
        final = chosen is not None and lr is not None and math.isclose(lr, chosen, rel_tol=1e-9)
        keep.append(final), tuned.append(True)
        # The arm's own lr is no variant (with and without prediction pair up at their chosen lrs), but the study
        # is: its runs never share a row with runs from outside it (at other lrs) or from another study.
        others = tuple(e for e in row.extra if not e.lstrip("+").startswith("optimizer.lr="))
        extras.append((*others, f"lr tuned: {found.folder.name}"))
    out = frame.assign(tuned=tuned, extra=extras)[keep]
    return out, len(frame) - len(out)


def tuning_frame(tuned: TunedStudy) -> pd.DataFrame:
    """One row per (arm, lr, tune seed): the validation metric (accuracy in %), diverged or missing, chosen."""
    study = tuned.study
    scale = 100.0 if study.metric == "acc" else 1.0
    rows = []
    for arm in study.arms:
        for point in arm.grid:
            chosen = arm.selection is not None and arm.selection.lr == point.lr
            for seed in study.tune_seeds:
                value = point.values.get(seed)
                status = "missing" if seed in point.missing else "diverged" if value is None else "completed"
                rows.append({
                    "optimizer": arm.optimizer, "predict_steps": arm.steps, "preset_lr": arm.preset_lr,
                    "lr": point.lr, "factor": point.lr / arm.preset_lr, "seed": seed, "status": status,
                    study.selection_key: value * scale if value is not None else math.nan,
                    "lr_mean": point.mean * scale, "chosen": chosen,
                })  # fmt: skip
    return pd.DataFrame(rows)


def _arms(study: Study):
    return sorted(study.arms, key=lambda a: (optimizer_rank(a.optimizer), a.steps))


def _arm_label(optimizer: str, steps: float) -> str:
    return pretty(optimizer) + (", without prediction" if steps == 0 else f", with prediction (s={steps:g})")


def tuning_table(tuned: TunedStudy, title: str) -> Table:
    """The chosen lr per arm, beside the validation metric at each lr of its grid."""
    study = tuned.study
    scale = 100.0 if study.metric == "acc" else 1.0
    factors = sorted({_factor(p.lr, a.preset_lr) for a in study.arms for p in a.grid})
    headers = ["arm", "preset lr", *[f"×{f:g}" for f in factors], "chosen lr", "note"]
    cells, bold = [], []
    for arm in _arms(study):
        by_factor = {_factor(p.lr, arm.preset_lr): p for p in arm.grid}
        chosen = arm.selection.lr if arm.selection else None
        row, marks = [_arm_label(arm.optimizer, arm.steps), f"{arm.preset_lr:g}"], [False, False]
        for f in factors:
            point = by_factor.get(f)
            if point is None:
                text = "—"
            elif point.missing:
                text = "not run"
            elif point.diverged:
                text = "diverged"
            else:
                text = f"{point.mean * scale:.2f} (lr {point.lr:g})"
            row.append(text)
            marks.append(point is not None and point.lr == chosen)
        row.append(f"{chosen:g}" if chosen is not None else "none")
        marks.append(False)
        note = arm.selection.reason if arm.selection else "not tuned"
        if arm.selection and arm.selection.at_edge:
            note += "; at the grid's edge"
        row.append(note)
        marks.append(False)
        cells.append(row)
        bold.append(marks)
    seeds = ", ".join(map(str, study.tune_seeds))
    caption = (
        f"{title}: learning rate tuned per arm. Each column is a multiple of the preset's lr; cells are the final "
        f"{metric_label(study.metric, 'validation')} (mean over tune seed(s) {seeds}); bold = chosen (best "
        "validation; an lr where a seed diverged is never chosen; ties go to the lr nearest the preset). The "
        f"comparison tables use the final seeds {', '.join(map(str, study.seeds))} at the chosen lr, judged on test."
    )
    return Table(headers, cells, bold, caption, align="lr" + "r" * len(factors) + "rl")


def _factor(lr: float, preset_lr: float) -> float:
    """The grid's multiple of the preset that ``lr`` is, to 2 significant digits (the lrs carry 3): x1/1000 and
    x1/300 stay two columns (rounding to decimals made both 0)."""
    return float(f"{lr / preset_lr:.2g}")


def tuning_figure(tuned: TunedStudy, title: str) -> Figure:
    """Final validation metric against lr (log scale), one line per arm; the chosen lr ringed, diverged lrs ×."""
    study = tuned.study
    scale = 100.0 if study.metric == "acc" else 1.0
    steps_run = sorted({a.steps for a in study.arms if a.steps > 0})
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(5.0, 3.6), layout="constrained")
        ax = fig.subplots()
        shown: list[float] = []  # every plotted value: diverged lrs are marked at the worst of them
        for arm in _arms(study):
            colour = COLOURS.get(arm.optimizer, "#000000")
            style = WITHOUT if arm.steps == 0 else WITH_STYLES[steps_run.index(arm.steps) % len(WITH_STYLES)]
            done = [p for p in arm.grid if not p.diverged and not p.missing]
            xs, ys = [p.lr for p in done], [p.mean * scale for p in done]
            shown += ys
            ax.plot(xs, ys, color=colour, linestyle=style, marker="o", markersize=3, label=_arm_label(*_key(arm)))
            chosen = next((p for p in done if arm.selection and p.lr == arm.selection.lr), None)
            if chosen is not None:
                ax.plot([chosen.lr], [chosen.mean * scale], marker="o", markersize=9, fillstyle="none",
                        color=colour, linestyle="none", label="_chosen")  # fmt: skip
        worst = (min if study.metric == "acc" else max)(shown, default=math.nan)
        for arm in study.arms:  # diverged lrs: a × at the worst value shown, where the metric would be off the chart
            for p in arm.grid:
                if p.diverged and math.isfinite(worst):
                    ax.plot([p.lr], [worst], marker="x", color=COLOURS.get(arm.optimizer, "#000000"), label="_x")
        ax.set_xscale("log")
        ax.set_xticks(spaced_ticks({p.lr for a in study.arms for p in a.grid}))  # the grid's lrs, in plain numbers
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelrotation=45)
        if study.metric == "ppl":
            _plain_log_axis(ax)
        ax.set(xlabel="learning rate (log scale)", ylabel=metric_label(study.metric, "final validation"))
        ax.legend(fontsize=6.5, frameon=False)
        fig.suptitle(
            f"{title}\nlr tuning: ringed = chosen lr; × = a tune seed diverged; dashed = without prediction",
            fontsize=8,
        )
    return fig


def spaced_ticks(lrs: set[float], min_ratio: float = 1.5) -> list[float]:
    """The lrs in increasing order, less any within ``min_ratio`` of the last one kept (their labels would
    overlap: two optimizers' grids meet at 0.009 and 0.0111, say)."""
    kept: list[float] = []
    for lr in sorted(lrs):
        if not kept or lr / kept[-1] >= min_ratio:
            kept.append(lr)
    return kept


def _key(arm) -> tuple[str, float]:
    return arm.optimizer, arm.steps
