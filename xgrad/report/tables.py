"""The comparison tables (with vs without weight prediction) and the cost table: numbers, then Markdown/LaTeX.

Numbers come from :func:`comparison` / :func:`cost` as DataFrames (what the CSV files hold); :func:`render`
turns a :class:`Table` (headers, cells, which cells are bold, caption, notes) into Markdown or booktabs LaTeX.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from .labels import fmt_diff, fmt_mean_std, higher_is_better, latex_escape, metric_label, optimizer_rank
from .labels import pretty_optimizer as pretty
from .reference import match_reference

__all__ = [
    "PairedTest",
    "Table",
    "comparison",
    "comparison_table",
    "cost",
    "cost_table",
    "diff_cell",
    "holm",
    "mean_std",
    "paired_test",
    "render",
    "row_groups",
    "row_label",
    "verdict",
]

# (header, cells, numbers to pick the best from or None, higher is better)
Column = tuple[str, list[str], list[float] | None, bool]
ALPHA = 0.05  # the significance level behind "holds up across seeds"
MIN_PAIRED = 3  # fewer matching seeds than this: no test, said so plainly


# ----------------------------------------------------------------------------------- numbers


def row_groups(sub: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    """The table rows of one setting: (optimizer, variant) groups in README optimizer order.

    Runs that predicted in another way than the rest of their baseline's runs (``predict_method=extrapolate``: a
    variant of its own, see :func:`xgrad.report.build.with_variants`) get that baseline (its ``base_variant``)
    added to their row; a row of baseline runs all of which are so shared, with no predicted runs of its own, is
    no row.
    """
    groups = dict(list(sub.groupby(["optimizer", "variant"], sort=False)))
    shared: set = set()
    if "base_variant" in sub:
        baselines = sub[~sub["predict"]]
        for (optimizer, variant), runs in groups.items():
            base = runs["base_variant"].iloc[0]
            if base != variant and runs["predict"].all():
                found = baselines[(baselines["optimizer"] == optimizer) & (baselines["base_variant"] == base)]
                groups[(optimizer, variant)] = pd.concat([found, runs])
                shared |= set(found.index)
    kept = [(k, r) for k, r in groups.items() if r["predict"].any() or not set(r.index) <= shared]
    return sorted(kept, key=lambda item: (optimizer_rank(item[0][0]), item[0][1]))


def _completed(runs: pd.DataFrame, column: str) -> pd.Series:
    """The completed seeds' values of ``column``, indexed by seed (NaN values dropped)."""
    done = runs[runs["status"] == "completed"]
    return done.set_index("seed")[column].dropna().sort_index()


class PairedTest(NamedTuple):
    """A paired comparison over matching seeds: p-value, pairs, verdict in words, 95% interval of the difference."""

    p: float
    n: int
    words: str
    low: float = math.nan
    high: float = math.nan


def paired_test(with_: pd.Series, without: pd.Series) -> PairedTest:
    """Paired t-test and 95% t-interval of ``with - without`` over the seeds both series have.

    The interval is ``mean(d) ± t(0.975, n-1) · sd(d) / sqrt(n)`` (what ``scipy.stats.ttest_rel(...)
    .confidence_interval()`` gives). A bootstrap interval is not offered: with the 3-5 seeds a CPU study affords it
    has 10-126 distinct resamples and is too narrow (it ignores the t distribution's heavier tails).
    """
    seeds = sorted(set(with_.index) & set(without.index))
    n = len(seeds)
    if n == 0:
        return PairedTest(math.nan, 0, "—" if with_.empty or without.empty else "no matching seeds")
    if n < MIN_PAIRED:
        return PairedTest(math.nan, n, f"too few seeds (n={n}) for a test")
    a, b = with_[seeds].to_numpy(dtype=float), without[seeds].to_numpy(dtype=float)
    diffs = a - b
    if np.allclose(diffs, diffs[0]):  # no spread: the t statistic is undefined, but the answer is plain
        d = float(diffs.mean())
        if np.isclose(d, 0.0):
            return PairedTest(math.nan, n, f"no (no difference on any of n={n} seeds)", d, d)
        return PairedTest(0.0, n, f"yes (same difference on all n={n} seeds)", d, d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(a, b)
    p = float(result.pvalue)
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1) * diffs.std(ddof=1) / math.sqrt(n))
    mean = float(diffs.mean())
    return PairedTest(p, n, f"{'yes' if p < ALPHA else 'no'} ({_p_text(p)}, n={n})", mean - half, mean + half)


def _p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``pvalues`` (NaN stays NaN and does not count as a test).

    The i-th smallest of m p-values becomes ``max over j <= i of min(1, (m - j + 1) p_(j))``; rejecting where the
    adjusted p is below alpha keeps the family-wise error rate at alpha for any dependence between the tests.
    """
    finite = sorted((p, i) for i, p in enumerate(pvalues) if p is not None and math.isfinite(p))
    m = len(finite)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def mean_std(values: pd.Series) -> tuple[float, float]:
    """Mean and sample standard deviation of ``values``; NaN where there are too few (none; one for the std)."""
    mean = float(values.mean()) if len(values) else math.nan
    std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return mean, std


def comparison(sub: pd.DataFrame, steps: float | None, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (optimizer, variant) of one setting: final and best test metric without and with prediction.

    ``sub`` is :func:`~xgrad.report.collect.runs_frame` restricted to one setting, with a ``variant`` column.
    ``steps`` picks the prediction series (None: there is none). Statistics use completed seeds only; diverged
    seeds are counted. Differences are ``mean(with) - mean(without)``; the paired test uses matching seeds.
    """
    rows = []
    for (optimizer, variant), runs in row_groups(sub):
        without = runs[~runs["predict"]]
        with_ = runs[runs["predict"] & (runs["steps"] == steps)] if steps is not None else runs.iloc[:0]
        row = {"optimizer": optimizer, "variant": variant, "predict_steps": steps}
        for side, part in (("without", without), ("with", with_)):
            row[f"n_{side}"] = int((part["status"] == "completed").sum())
            row[f"diverged_{side}"] = int((part["status"] == "diverged").sum())
        for what in ("final", "best"):
            a, b = _completed(without, what), _completed(with_, what)
            row[f"{what}_without_mean"], row[f"{what}_without_std"] = mean_std(a)
            row[f"{what}_with_mean"], row[f"{what}_with_std"] = mean_std(b)
            row[f"{what}_diff"] = row[f"{what}_with_mean"] - row[f"{what}_without_mean"]
            test = paired_test(b, a)
            row[f"{what}_p_value"], row[f"{what}_n_paired"], row[f"{what}_holds_up"] = test.p, test.n, test.words
            row[f"{what}_ci_low"], row[f"{what}_ci_high"] = test.low, test.high
        row.update(_reference_columns(reference, runs, optimizer))
        rows.append(row)
    higher = higher_is_better(sub["metric"].iloc[0]) if len(sub) else True
    for what in ("final", "best"):
        _adjust(rows, what)
        for row in rows:
            low, high = row[f"{what}_ci_low"], row[f"{what}_ci_high"]
            paired = (low + high) / 2 if math.isfinite(low) and math.isfinite(high) else row[f"{what}_diff"]
            words = verdict(paired, row[f"{what}_p_holm"], row[f"{what}_n_paired"], higher)
            more = row["diverged_with"] - row["diverged_without"]
            if more and words in ("helped", "hurt"):  # the test saw only the seeds that completed on both sides
                words += f"; {abs(more)} more seed(s) diverged {'with' if more > 0 else 'without'} prediction"
            row[f"{what}_verdict"] = words
    return pd.DataFrame(rows)


def verdict(diff: float, p_holm: float, n_paired: int, higher: bool) -> str:
    """Prediction ``helped``, ``hurt``, or ``could not be told apart``; ``too few seeds`` below 3 pairs.

    ``diff`` is the mean paired difference (with - without over the matching seeds the test used).

    Helped or hurt only when the paired test holds up after Holm's adjustment over the table's column (with one
    test, Holm's p is the test's own), i.e. the 95% interval excludes 0 and survives the multiple comparison.
    """
    if n_paired < MIN_PAIRED:
        return "too few seeds"
    if not math.isfinite(p_holm) or p_holm >= ALPHA:  # NaN: the same value with and without on every seed
        return "could not be told apart"
    return "helped" if (diff > 0) == higher else "hurt"


def _adjust(rows: list[dict], what: str) -> None:
    """Holm-adjust one column's p-values over the table's rows (one family of tests) and say so in the verdicts."""
    adjusted = holm([row[f"{what}_p_value"] for row in rows])
    tests = sum(math.isfinite(p) for p in adjusted)
    for row, p in zip(rows, adjusted):
        row[f"{what}_p_holm"], row[f"{what}_n_tests"] = p, tests
        if tests > 1 and math.isfinite(p):
            row[f"{what}_holds_up"] += f"; Holm {_p_text(p)}"


def _reference_columns(reference: pd.DataFrame | None, runs: pd.DataFrame, optimizer: str) -> dict:
    """The published test number for this row (if the reference table has one), else empty columns."""
    empty = {"ref_metric": None, "ref_value": math.nan, "ref_std": math.nan, "ref_setting": None, "ref_source": None}
    if reference is None or reference.empty or runs["reduced_scale"].any():  # published numbers are full scale
        return empty
    layers = runs["num_layers"].dropna().unique()
    num_layers = int(layers[0]) if len(layers) == 1 else None
    first = runs.iloc[0]
    found = match_reference(reference, first["dataset"], first["model"], optimizer, num_layers)
    found = found[found["metric"].str.contains("test")]  # the tables compare test metrics
    if found.empty:
        return empty
    ref = found.iloc[0]
    return {
        "ref_metric": ref["metric"],
        "ref_value": float(ref["value"]),
        "ref_std": float(ref["std"]),
        "ref_setting": ref["setting"],
        "ref_source": ref["source"],
    }


COST_COLUMNS = (("seconds", "train_epoch_seconds", 1.0), ("memory_mib", "peak_memory_bytes", 2.0**-20))


def cost(frame: pd.DataFrame) -> pd.DataFrame:
    """Training seconds per epoch and peak memory without and with prediction, and their ratios (with / without).

    One row per (dataset, model, reduced_scale, optimizer, variant) and prediction horizon; completed seeds only.
    """
    rows = []
    done = frame[frame["status"] == "completed"]
    for (dataset, model, reduced), setting in done.groupby(["dataset", "model", "reduced_scale"], sort=True):
        for (optimizer, variant), runs in row_groups(setting):
            without = runs[~runs["predict"]]
            for steps in sorted(runs.loc[runs["predict"], "steps"].unique()) or [None]:
                with_ = runs[runs["predict"] & (runs["steps"] == steps)] if steps is not None else runs.iloc[:0]
                row = {
                    "dataset": dataset,
                    "model": model,
                    "reduced_scale": reduced,
                    "optimizer": optimizer,
                    "variant": variant,
                    "predict_steps": steps,
                    "n_without": len(without),
                    "n_with": len(with_),
                }
                row["measured_with"] = bool(with_.get("measured_error", pd.Series(dtype=bool)).any())
                for name, column, scale in COST_COLUMNS:
                    a, b = without[column].mean() * scale, with_[column].mean() * scale
                    row[f"{name}_without"], row[f"{name}_with"] = a, b
                    row[f"{name}_ratio"] = b / a if a > 0 else math.nan
                rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- presentation


@dataclass
class Table:
    """A table ready to render: header groups (LaTeX only), headers, cells, bold cells, caption and notes."""

    headers: list[str]
    cells: list[list[str]]
    bold: list[list[bool]]
    caption: str
    groups: list[tuple[str, int]] = field(default_factory=list)  # (label, span) over the headers; LaTeX only
    notes: list[str] = field(default_factory=list)
    align: str = ""
    latex_headers: list[str] | None = None  # shorter headers under the groups (LaTeX has two header rows)


def _best_mask(values: list[float] | None, shown: list[str], higher: bool) -> list[bool]:
    """Bold the best shown value of a column (ties included); nothing when fewer than two values compete."""
    if values is None:  # a text column
        return [False] * len(shown)
    finite = [(v, s) for v, s in zip(values, shown) if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return [False] * len(values)
    best = (max if higher else min)(finite)[0]
    best_text = next(s for v, s in finite if v == best).split(" ")[0]  # compare at the shown precision
    return [v is not None and math.isfinite(v) and s.split(" ")[0] == best_text for v, s in zip(values, shown)]


def _seeds_cell(counts: pd.Series, diverged: pd.Series) -> list[str]:
    return [f"{n}" + (f" ({d} diverged)" if d else "") for n, d in zip(counts, diverged)]


def _mean_cells(table: pd.DataFrame, what: str, side: str) -> list[str]:
    """``mean ± std`` per row; ``diverged`` when every seed of that side diverged."""
    cells = []
    for mean, std, n, diverged in zip(
        table[f"{what}_{side}_mean"], table[f"{what}_{side}_std"], table[f"n_{side}"], table[f"diverged_{side}"]
    ):
        cells.append("diverged" if n == 0 and diverged else fmt_mean_std(mean, std))
    return cells


def row_label(optimizer: str, variant: str) -> str:
    return pretty(optimizer) + (f" ({variant})" if variant else "")


def comparison_table(table: pd.DataFrame, metric: str, title: str, selected_on: set[str]) -> Table:
    """Presentation of :func:`comparison` for one setting and prediction horizon."""
    higher = higher_is_better(metric)
    steps = table["predict_steps"].iloc[0] if len(table) else None
    s_text = f"s={steps:g}" if steps is not None and not pd.isna(steps) else "none run"
    seeds = [_seeds_cell(table[f"n_{side}"], table[f"diverged_{side}"]) for side in ("without", "with")]
    columns: list[Column] = [
        ("optimizer", [row_label(o, v) for o, v in zip(table["optimizer"], table["variant"])], None, True),
        ("seeds without", seeds[0], None, True),
        ("seeds with", seeds[1], None, True),
    ]
    for what in ("final", "best"):
        for side in ("without", "with"):
            label = f"{what}: {side}" + (f" ({s_text})" if side == "with" else "")
            means = list(table[f"{what}_{side}_mean"])
            columns.append((label, _mean_cells(table, what, side), means, higher))
        diffs = list(table[f"{what}_diff"])
        cells = [diff_cell(d, lo, hi) for d, lo, hi in zip(diffs, table[f"{what}_ci_low"], table[f"{what}_ci_high"])]
        columns.append((f"{what}: Δ [95% CI]", cells, diffs, higher))
        columns.append((f"{what}: holds up?", list(table[f"{what}_holds_up"]), None, True))
    notes = _multiplicity_notes(table)
    published = bool(table["ref_value"].notna().any())
    if published:
        shown, refs = [], []
        for value, std, metric_name, setting, source in table[
            ["ref_value", "ref_std", "ref_metric", "ref_setting", "ref_source"]
        ].itertuples(index=False):
            if pd.isna(value):
                shown.append("—")
                continue
            key = (setting, metric_name, source)
            if key not in refs:
                refs.append(key)
                notes.append(f"[{len(refs)}] {setting}, {metric_name}: {source}")
            shown.append(f"{fmt_mean_std(value, std)} [{refs.index(key) + 1}]")
        columns.append(("published", shown, None, True))
    return Table(
        headers=[c[0] for c in columns],
        cells=[list(r) for r in zip(*[c[1] for c in columns])],
        bold=[list(r) for r in zip(*[_best_mask(values, shown, higher) for _, shown, values, higher in columns])],
        caption=_caption(title, metric, s_text, selected_on),
        groups=[("", 1), ("seeds", 2), (f"final {metric_label(metric)}", 4), (f"best {metric_label(metric)}", 4)]
        + ([("", 1)] if published else []),
        notes=notes,
        align="l" + "r" * 2 + ("rrrl" * 2) + ("l" if published else ""),
        latex_headers=[
            "optimizer",
            "without",
            "with",
            *(["without", f"with ({s_text})", "Δ [95% CI]", "holds up?"] * 2),
        ]
        + (["published"] if published else []),
    )


def diff_cell(diff: float, low: float, high: float) -> str:
    """``+0.42 [-0.10, +0.94]``: the difference of the means and the paired 95% interval (when there is one).

    The interval is centred on the mean difference over the matching seeds only. When some seeds have no partner
    (a diverged or missing seed on one side) that centre differs from the difference of all completed seeds'
    means, and the cell names it: ``-1.25; matching seeds +1.00 [+0.80, +1.20]`` (else the interval could lie
    beside, not around, the difference printed with it).
    """
    if not math.isfinite(low) or not math.isfinite(high):
        return fmt_diff(diff)
    interval = f"[{fmt_diff(low)}, {fmt_diff(high)}]"
    centre = (low + high) / 2
    if math.isclose(centre, diff, rel_tol=1e-9, abs_tol=1e-9):
        return f"{fmt_diff(diff)} {interval}"
    return f"{fmt_diff(diff)}; matching seeds {fmt_diff(centre)} {interval}"


def _multiplicity_notes(table: pd.DataFrame) -> list[str]:
    """A note per column that holds several tests: how many, and how many survive Holm's adjustment."""
    notes = []
    for what in ("final", "best"):
        tests = int(table[f"{what}_n_tests"].max()) if len(table) else 0
        if tests > 1:
            survive = int((table[f"{what}_p_holm"] < ALPHA).sum())
            notes.append(
                f"{what}: {tests} paired tests at once (one per row); p and the 95% intervals are per test, "
                f"Holm p is adjusted over the {tests} (family-wise error {ALPHA}); {survive} of {tests} stay "
                f"below {ALPHA} after adjustment."
            )
    return notes


def _caption(title: str, metric: str, s_text: str, selected_on: set[str]) -> str:
    better = "higher" if higher_is_better(metric) else "lower"
    how = {
        "val": "at the epoch with the best validation " + ("accuracy" if metric == "acc" else "perplexity"),
        "test": "at the best test epoch (no validation split)",
    }
    best = "; ".join(how.get(s, s) for s in sorted(selected_on)) or how["test"]
    return (
        f"{title}: {metric_label(metric)}, mean ± std over completed seeds, without and with weight prediction "
        f"({s_text}). final = last epoch; best = test value {best}. Δ = with − without ({better} is better). "
        f"95% CI = paired t-interval of with − without over matching seeds (none below {MIN_PAIRED} seeds; "
        "its centre is shown too when some completed seeds have no partner). "
        f"holds up? = paired t-test over matching seeds, p < {ALPHA}. Bold: best in column. "
        "Diverged seeds are counted, not averaged."
    )


def cost_table(table: pd.DataFrame, devices: set[str]) -> Table:
    """Presentation of :func:`cost`."""
    from .labels import pretty_dataset, pretty_model

    def ratio(v: float) -> str:
        return f"{v:.2f}×" if math.isfinite(v) else "—"

    def number(v: float, digits: int) -> str:
        return f"{v:.{digits}f}" if math.isfinite(v) else "—"

    cells = []
    for r in table.itertuples():
        s = f"{r.predict_steps:g}" if r.predict_steps is not None and not pd.isna(r.predict_steps) else "—"
        setting = f"{pretty_dataset(r.dataset)} / {pretty_model(r.model)}" + (" (reduced)" if r.reduced_scale else "")
        cells.append(
            [
                setting,
                row_label(r.optimizer, r.variant),
                s,
                f"{r.n_without} / {r.n_with}",
                number(r.seconds_without, 2),
                number(r.seconds_with, 2),
                ratio(r.seconds_ratio),
                number(r.memory_mib_without, 0),
                number(r.memory_mib_with, 0),
                ratio(r.memory_mib_ratio),
            ]
        )
    caption = (
        "Cost of weight prediction: training seconds per epoch (summary.json's train_seconds / epochs_done: "
        "evaluation excluded; mean over completed seeds) and peak memory, without and with prediction; "
        "ratio = with / without."
    )
    notes = []
    if "measured_with" in table and table["measured_with"].any():
        notes.append(
            "Runs with prediction that also measured the prediction error (prediction_error_every > 0, the "
            "default) include that measurement in their time and peak memory: while a sample is in flight it "
            "holds two float64 copies of the parameters (four float32-sized copies, against the one spare copy "
            "prediction itself needs). Run with prediction_error_every=0 "
            "to measure prediction's cost alone."
        )
    if any(d.startswith("cpu") for d in devices):
        notes.append(
            "On CPU, peak memory is the process's peak resident memory; when several runs share one "
            "process (a Hydra multirun), it includes the earlier runs, so CPU memory ratios are not "
            "comparable."
        )
    headers = [
        "setting",
        "optimizer",
        "horizon s",
        "seeds (without / with)",
        "sec/epoch without",
        "sec/epoch with",
        "time ratio",
        "peak MiB without",
        "peak MiB with",
        "memory ratio",
    ]
    return Table(headers, cells, [[False] * len(headers) for _ in cells], caption, notes=notes, align="llrr" + "r" * 6)


def render(table: Table, fmt: str) -> str:
    """The table as ``markdown`` or ``latex`` (booktabs) text."""
    return {"markdown": _markdown, "latex": _latex}[fmt](table)


def _markdown(table: Table) -> str:
    def cell(text: str, bold: bool) -> str:
        text = str(text).replace("|", "\\|")
        return f"**{text}**" if bold else text

    lines = [
        table.caption,
        "",
        "| " + " | ".join(table.headers) + " |",
        "|" + "|".join(":--" if a == "l" else "--:" for a in (table.align or "l" * len(table.headers))) + "|",
    ]
    for row, bold in zip(table.cells, table.bold):
        lines.append("| " + " | ".join(cell(c, b) for c, b in zip(row, bold)) + " |")
    if table.notes:
        lines += ["", *[f"{n}  " for n in table.notes]]
    return "\n".join(lines) + "\n"


def _latex(table: Table) -> str:
    esc: Callable[[str], str] = latex_escape

    def cell(text: str, bold: bool) -> str:
        return f"\\textbf{{{esc(text)}}}" if bold else esc(text)

    headers = table.latex_headers or table.headers
    lines = [
        "% generated by python -m xgrad.report; needs \\usepackage{booktabs}",
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{{esc(table.caption)}}}",
        f"\\begin{{tabular}}{{{table.align or 'l' * len(headers)}}}",
        "\\toprule",
    ]
    if table.groups:
        spans, rules, start = [], [], 1
        for label, span in table.groups:
            spans.append(f"\\multicolumn{{{span}}}{{c}}{{{esc(label)}}}" if span > 1 else esc(label))
            if label:
                rules.append(f"\\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        lines += [" & ".join(spans) + " \\\\", "".join(rules)]
    lines.append(" & ".join(esc(h) for h in headers) + " \\\\")
    lines.append("\\midrule")
    for row, bold in zip(table.cells, table.bold):
        lines.append(" & ".join(cell(c, b) for c, b in zip(row, bold)) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if table.notes:
        lines += ["\\par\\footnotesize", *[esc(n) + "\\\\" for n in table.notes]]
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"
