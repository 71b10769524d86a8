"""From collected runs to the output folder: figures, tables, cost table, runs.csv and the README index.

A *setting* is one (dataset, model, reduced_scale): it gets one convergence figure, one comparison table per
prediction horizon ``s``, a horizon table when it ran several, and a ranking-stability table. Inside a setting,
overrides that differ between runs (besides optimizer, prediction and seed) name the row's *variant*, e.g.
``optimizer.lr=0.01``; overrides common to all runs are left out.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from xgrad.rundir import atomic_write

from .collect import Collection, ReportError, runs_frame
from .figures import convergence_figure, prediction_error_figure, save_figure
from .horizon import horizon_frame, horizon_table
from .labels import setting_title, slug
from .ranking import ranking_stability, ranking_table
from .repro import CONFIGS, EPOCHS, epochs_frame, run_configs
from .tables import Table, comparison, comparison_table, cost, cost_table, render
from .tuning import TunedStudy, split_tuned, tuning_figure, tuning_frame, tuning_table

__all__ = ["MANIFEST", "Section", "build_report", "check_out", "with_variants"]


@dataclass
class Section:
    """What the report holds for one setting."""

    title: str
    figures: list[Path] = field(default_factory=list)
    error_figures: list[Path] = field(default_factory=list)  # prediction error and cosine, when measured
    tables: list[tuple[str, list[Path], str]] = field(default_factory=list)  # (label, files, markdown)
    tests: int = 0  # paired t-tests made in its tables (final and best columns)


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` atomically (UTF-8) and return ``path``."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


def write_table(out: Path, stem: str, heading: str, table: Table, numbers: pd.DataFrame) -> tuple[list[Path], str]:
    """``stem.md`` (under ``# heading``), ``stem.tex`` and ``stem.csv`` (``numbers``); the paths and the Markdown."""
    markdown = render(table, "markdown")
    files = [
        write_text(out / f"{stem}.md", f"# {heading}\n\n{markdown}"),
        write_text(out / f"{stem}.tex", render(table, "latex")),
        write_text(out / f"{stem}.csv", numbers.to_csv(index=False)),
    ]
    return files, markdown


def with_variants(sub: pd.DataFrame) -> pd.DataFrame:
    """``sub`` with a ``variant`` column: the overrides of each run that not every run in ``sub`` shares, then
    how it predicted where that sets it apart from other runs of its baseline (``flavour``); ``base_variant``
    without the latter (the row of its baseline)."""
    common = set.intersection(*(set(e) for e in sub["extra"])) if len(sub) else set()
    out = sub.copy()
    out["base_variant"] = [", ".join(t for t in extra if t not in common) for extra in sub["extra"]]
    flavours = sub["flavour"] if "flavour" in sub else [()] * len(sub)
    out["variant"] = [", ".join(t for t in (base, *how) if t) for base, how in zip(out["base_variant"], flavours)]
    return out


def _settings(frame: pd.DataFrame) -> list[tuple[tuple[str, str, bool], pd.DataFrame]]:
    if frame.empty:
        return []
    return sorted(frame.groupby(["dataset", "model", "reduced_scale"], sort=False), key=lambda item: item[0])


def _section(
    collection: Collection, key: tuple[str, str, bool], sub: pd.DataFrame, out: Path, reference: pd.DataFrame | None
) -> Section:
    dataset, model, reduced = key
    title = setting_title(dataset, model, bool(sub["synthetic"].any()), bool(reduced))
    name = slug(dataset, model, "reduced" if reduced else "")
    section = Section(title)
    figure = convergence_figure(collection.runs, sub, title)
    section.figures = save_figure(figure, out / f"convergence_{name}")
    figure = prediction_error_figure(collection.runs, sub, title)
    if figure is not None:
        section.error_figures = save_figure(figure, out / f"prediction_error_{name}")
    metric = sub["metric"].iloc[0]
    steps_run = sorted(sub.loc[sub["predict"], "steps"].unique()) or [None]
    tuned = "tuned" in sub and bool(sub["tuned"].any())
    setting = {"dataset": dataset, "model": model, "reduced_scale": reduced, "unit": "%" if metric == "acc" else "ppl"}

    def with_setting(numbers: pd.DataFrame) -> pd.DataFrame:
        return pd.concat([pd.DataFrame([setting] * len(numbers)), numbers], axis=1)

    comparisons = {}
    for steps in steps_run:
        numbers = comparisons[steps] = comparison(sub, steps, reference)
        section.tests += int(numbers["final_p_value"].notna().sum() + numbers["best_p_value"].notna().sum())
        table = comparison_table(numbers, metric, title, set(sub["best_selected_on"]))
        table.notes += [TUNED_NOTE] if tuned else []
        stem = f"table_{name}" + (f"_s{steps:g}" if len(steps_run) > 1 else "")
        files, markdown = write_table(out, stem, title, table, with_setting(numbers))
        label = "with prediction " + (f"(s={steps:g})" if steps is not None else "(none run)")
        section.tables.append((label, files, markdown))
    horizons = horizon_frame(collection.runs, sub, comparisons) if len(steps_run) > 1 else pd.DataFrame()
    if not horizons.empty:
        table = horizon_table(horizons, metric, title)
        table.notes += [TUNED_NOTE] if tuned else []
        files, markdown = write_table(out, f"horizon_{name}", title, table, with_setting(horizons))
        section.tables.append(("the prediction horizon s", files, markdown))
    ranking = ranking_stability(collection.runs, sub)
    if not ranking.empty:
        files, markdown = write_table(out, f"ranking_{name}", title, ranking_table(ranking, metric, title), ranking)
        section.tables.append(("ranking stability of the optimizers", files, markdown))
    return section


MANIFEST = ".xgrad-report-files"  # the names of the files the report wrote into its folder, one per line


def check_out(out: Path) -> None:
    """Raise :class:`ReportError` unless ``out`` is a new folder, an empty one, or one this report wrote before.

    A folder is the report's when it holds the manifest; anything else there is the user's and stays untouched.
    """
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file, not a folder: give a new or empty folder")
    if out.is_dir() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise ReportError(
            f"--out {out} is not empty and was not written by xgrad.report (it has no {MANIFEST}): "
            "give a new or empty folder, so that no file of yours is replaced"
        )


TUNED_NOTE = (
    "Learning rates tuned per arm on the validation split (see the tuning section): with and without prediction "
    "may run at different lrs."
)


def _tuning_sections(
    collection: Collection, frame: pd.DataFrame, studies: list[TunedStudy], out: Path
) -> tuple[pd.DataFrame, list[Section], int]:
    """Per study: the chosen-lr table and the validation-vs-lr figure; the frame without its tuning-only runs."""
    sections = []
    for tuned in studies:
        inside = [Path(src).resolve().is_relative_to(tuned.folder) for src in frame.get("source", [])]
        sub = frame[inside] if len(frame) else frame
        if len(sub):
            first = sub.iloc[0]
            title = setting_title(
                first["dataset"], first["model"], bool(first["synthetic"]), bool(first["reduced_scale"])
            )
        else:
            title = tuned.folder.name
        name = slug("tuning", tuned.folder.name)
        section = Section(f"Learning-rate tuning: {title} ({tuned.folder.name})")
        section.figures = save_figure(tuning_figure(tuned, title), out / name)
        files, markdown = write_table(out, name, section.title, tuning_table(tuned, title), tuning_frame(tuned))
        section.tables.append(("chosen lr per arm", files, markdown))
        sections.append(section)
    kept, left_out = split_tuned(frame, collection.runs, studies)
    return kept, sections, left_out


def build_report(
    collection: Collection,
    out: Path,
    reference: pd.DataFrame | None = None,
    inputs: list[str] | None = None,
    studies: list[TunedStudy] | None = None,
) -> Path:
    """Write the whole report into ``out``; return the path of its ``README.md`` index.

    ``studies`` (tuning studies among the inputs): their tuning-only runs are left out of the comparison and
    shown in a tuning section instead.

    Everything is written into a temporary folder inside ``out`` first and then moved into place: the files
    an earlier report wrote (its manifest) are replaced or removed, a file of anyone else is never replaced
    (:class:`ReportError` before anything is moved).
    """
    check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".xgrad-report-", suffix=".tmp", dir=out))
    except OSError as e:
        raise ReportError(f"--out {out} cannot be written: {e.strerror or e}") from e
    try:
        _build(collection, staging, reference, inputs, studies or [])
        _publish(staging, out)
    except OSError as e:
        raise ReportError(f"writing the report into {out} failed: {e.strerror or e} ({e.filename or out})") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "README.md"


def _publish(staging: Path, out: Path) -> None:
    """Move the staged files into ``out``, remove what an earlier report wrote and this one did not."""
    names = sorted(p.name for p in staging.iterdir())
    manifest = out / MANIFEST
    previous = set(manifest.read_text().split()) if manifest.exists() else set()
    foreign = [n for n in names if (out / n).exists() and n not in previous]
    if foreign:
        raise ReportError(
            f"--out {out} holds {', '.join(foreign)}, not written by xgrad.report: not replaced; move them away "
            "or give another folder"
        )
    for name in names:
        os.replace(staging / name, out / name)
    for name in previous - set(names):
        (out / name).unlink(missing_ok=True)
    write_text(manifest, "\n".join(names) + "\n")


def _build(
    collection: Collection,
    out: Path,
    reference: pd.DataFrame | None,
    inputs: list[str] | None,
    studies: list[TunedStudy],
) -> None:
    frame = runs_frame(collection.runs)
    frame, tuning, tuning_only = _tuning_sections(collection, frame, studies, out)
    sections, parts = [], []
    for key, sub in _settings(frame):
        sub = with_variants(sub)
        parts.append(sub)
        sections.append(_section(collection, key, sub, out, reference))
    cost_files: list[Path] = []
    cost_markdown = ""
    if parts:
        numbers = cost(pd.concat(parts))
        if not numbers.empty:
            table = cost_table(numbers, set(frame["device"]))
            cost_files, cost_markdown = write_table(out, "cost", "Cost of weight prediction", table, numbers)
        runs_csv = pd.concat(parts).drop(columns=["run"])
        runs_csv = runs_csv.assign(extra=runs_csv["extra"].map(", ".join), flavour=runs_csv["flavour"].map(", ".join))
        write_text(out / "runs.csv", runs_csv.to_csv(index=False))
        used = pd.concat(parts)  # per-epoch metrics and configurations: what scripts/reproduce.py checks against
        write_text(out / EPOCHS, epochs_frame(collection.runs, used).to_csv(index=False))
        write_text(out / CONFIGS, run_configs(collection.runs, used))
    index = _index(collection, frame, [*sections, *tuning], cost_files, cost_markdown, inputs or [], tuning_only)
    write_text(out / "README.md", index)


def _links(paths: list[Path]) -> str:
    return " · ".join(f"[{p.suffix.lstrip('.').upper()}]({p.name})" for p in paths)


def _index(
    collection: Collection,
    frame: pd.DataFrame,
    sections: list[Section],
    cost_files: list[Path],
    cost_markdown: str,
    inputs: list[str],
    tuning_only: int = 0,
) -> str:
    """The README.md of the output folder: every figure and table, then the runs used and skipped."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    statuses = frame["status"].value_counts().to_dict() if not frame.empty else {}
    percent = "Accuracies are in percent. " if not frame.empty and (frame["metric"] == "acc").any() else ""
    lines = [
        "# Results report",
        "",
        f"Generated {now} by `python -m xgrad.report {' '.join(inputs)}`.",
        "",
        f"Runs used: {len(frame)} ({statuses.get('completed', 0)} completed, "
        f"{statuses.get('diverged', 0)} diverged); skipped: {len(collection.skipped)} (see the end). "
        f"{percent}Statistics use completed seeds; diverged seeds are counted, not averaged.",
        "",
    ]
    lines += _provenance(collection)
    if tuning_only:
        lines += [
            f"{tuning_only} tuning runs at lrs not chosen are left out of the comparison (see the tuning sections).",
            "",
        ]
    if not sections:
        lines += ["**No completed or diverged runs: nothing to plot or tabulate.**", ""]
    tests = sum(section.tests for section in sections)
    if tests > 1:
        lines += [
            f"Multiple comparisons: the tables below make {tests} paired t-tests in all (final and best columns "
            f"together). Holm's adjustment is applied within each table's column; across the whole report, about "
            f"{0.05 * tests:.1f} verdicts of p < 0.05 are expected by chance alone even if prediction changed nothing.",
            "",
        ]
    for section in sections:
        png = next(p for p in section.figures if p.suffix == ".png")
        lines += [
            f"## {section.title}",
            "",
            f"![convergence, {section.title}]({png.name})",
            "",
            f"Figure: {_links(section.figures)}",
            "",
        ]
        if section.error_figures:
            png = next(p for p in section.error_figures if p.suffix == ".png")
            lines += [f"![prediction error, {section.title}]({png.name})", "",
                      f"Prediction error: {_links(section.error_figures)}", ""]  # fmt: skip
        for label, files, markdown in section.tables:
            lines += [f"### Table, {label}", "", f"Files: {_links(files)}", "", markdown]
    if cost_files:
        lines += ["## Cost of weight prediction", "", f"Files: {_links(cost_files)}", "", cost_markdown]
    lines += _runs_used(frame) + _skipped(collection)
    return "\n".join(lines) + "\n"


def _provenance(collection: Collection) -> list[str]:
    """What made the runs read (tuning runs included): torch, device, code commit, seeds, summed wall time."""
    summaries = [run.summary for run in collection.runs]
    if not summaries:
        return []

    def counted(key: str, short: int = 0) -> str:
        values = pd.Series([_value(s, key, short) for s in summaries]).value_counts()
        if len(values) == 1:
            return str(values.index[0])
        return ", ".join(f"{value} ({n} run{'s' * (n > 1)})" for value, n in values.items())

    wall = sum(float(s.get("wall_seconds") or 0.0) for s in summaries) / 3600
    train = sum(float(s.get("train_seconds") or 0.0) for s in summaries) / 3600
    seeds = ", ".join(str(seed) for seed in sorted({s.get("seed") for s in summaries if s.get("seed") is not None}))
    return [
        f"Made by: torch {counted('torch_version')} on {counted('device')}; code at commit {counted('git_commit', 7)}; "
        f"seeds {seeds}. Time: {wall:.2f} h of run wall time summed over the {len(summaries)} runs read (runs "
        f"launched side by side overlap in it), {train:.2f} h of it training.",
        "",
    ]


def _value(summary: dict, key: str, short: int = 0) -> str:
    """A summary's ``key`` as provenance shows it; a run resumed under other code shows each commit, oldest first."""
    commits = summary.get("git_commits") if key == "git_commit" else None
    if isinstance(commits, list) and len(commits) > 1:
        return " then ".join(str(c or "unknown")[: short or None] for c in commits)
    return str(summary.get(key) or "unknown")[: short or None]


def _runs_used(frame: pd.DataFrame) -> list[str]:
    lines = ["## Runs used", ""]
    if frame.empty:
        return [*lines, "None.", ""]
    lines += [
        "One row per run, with its final and best metrics: [runs.csv](runs.csv); every epoch of every run: "
        f"[{EPOCHS}]({EPOCHS}); their configurations: [{CONFIGS}]({CONFIGS}) (re-run one and compare its first "
        "epoch: `python scripts/reproduce.py REPORT_FOLDER`).",
        "",
    ]
    lines += ["| configuration (seed group) | seed | status | run |", "|:--|--:|:--|:--|"]
    for row in frame.sort_values(["group", "seed"]).itertuples():
        lines.append(f"| {row.group} | {row.seed} | {row.status} | `{row.source}` |")
    return [*lines, ""]


def _skipped(collection: Collection) -> list[str]:
    lines = ["## Skipped", ""]
    if not collection.skipped:
        return [*lines, "None.", ""]
    lines += ["| run | reason |", "|:--|:--|"]
    for item in sorted(collection.skipped, key=lambda s: s.source):
        reason = item.reason.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{item.source}` | {reason} |")
    return [*lines, ""]
