"""README's results table from committed reports: per optimizer and setting, did prediction help, hurt, or neither?

    python scripts/results_table.py results/cpu_evidence_cifar10 results/cpu_evidence_ptb --steps 1
    python scripts/results_table.py results/cpu_evidence_cifar10 --steps 0.5 1 2 4 --optimizers sgdm adamw

Reads each report's comparison tables (``table_*.csv``, written by ``python -m xgrad.report``) and prints one
Markdown table: a row per optimizer, a column per (setting, horizon s), each cell the verdict on the final test
metric (``helped``/``hurt`` only when the paired test holds up after Holm's adjustment, see
``xgrad.report.tables.verdict``), the difference with its 95% interval, and a link to the report.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xgrad.report.labels import optimizer_rank, pretty_dataset, pretty_model  # noqa: E402
from xgrad.report.tables import diff_cell, row_label  # noqa: E402


def _cell(row: pd.Series) -> str:
    unit = "pp" if row["unit"] == "%" else "ppl"
    return f"{row['final_verdict']}: {diff_cell(row['final_diff'], row['final_ci_low'], row['final_ci_high'])} {unit}"


def results_table(
    reports: list[Path], base: Path, steps: list[float] | None = None, optimizers: list[str] | None = None
) -> str:
    """The Markdown table; links are relative to ``base`` (the folder of the file it goes into).

    ``steps``: only these prediction horizons (default: every horizon a report has, a column each);
    ``optimizers``: only these optimizers' rows (registry names, e.g. ``sgdm adamw``; default: all).
    """
    columns: dict[str, dict[str, str]] = {}
    order: dict[str, tuple] = {}
    found: set[float] = set()  # the horizons the reports have
    names: set[str] = set()  # the optimizers they have
    for report in reports:
        tables = sorted(report.glob("table_*.csv"))
        if not tables:
            raise SystemExit(f"error: {report} has no table_*.csv (not a report folder written by xgrad.report)")
        link = Path(os.path.relpath(Path(report, "README.md").resolve(), base.resolve()))
        for path in tables:
            table = pd.read_csv(path)
            if "final_verdict" not in table:
                raise SystemExit(
                    f"error: {path} has no final_verdict column: rebuild the report with python -m xgrad.report"
                )
            for _, row in table.iterrows():
                if pd.isna(row["predict_steps"]) or row["n_with"] + row["diverged_with"] == 0:
                    continue  # no run with prediction at this s: "not run", not a verdict
                found.add(float(row["predict_steps"]))
                names.add(row["optimizer"])
                if steps is not None and row["predict_steps"] not in steps:
                    continue
                if optimizers is not None and row["optimizer"] not in optimizers:
                    continue
                scale = " (reduced)" if row["reduced_scale"] else ""
                title = (
                    f"{pretty_dataset(row['dataset'])} {pretty_model(row['model'])}{scale}, s={row['predict_steps']:g}"
                )
                column = f"[{title}]({link.as_posix()})"
                label = row_label(row["optimizer"], row["variant"] if isinstance(row["variant"], str) else "")
                order[label] = optimizer_rank(row["optimizer"])
                columns.setdefault(column, {})[label] = _cell(row)
    known = ", ".join(sorted(names))
    unknown = sorted(set(optimizers or ()) - names)
    if unknown:
        raise SystemExit(f"error: --optimizers {' '.join(unknown)}: no report has it (optimizers: {known})")
    if not columns and (steps is not None or optimizers is not None):
        asked = f" --steps {' '.join(f'{s:g}' for s in steps)}" if steps is not None else ""
        asked += f" --optimizers {' '.join(optimizers)}" if optimizers is not None else ""
        have = ", ".join(f"{s:g}" for s in sorted(found)) or "none"
        raise SystemExit(f"error:{asked}: no report has it (horizons s: {have}; optimizers: {known})")
    labels = sorted(order, key=lambda label: (order[label], label))
    lines = ["| optimizer | " + " | ".join(columns) + " |", "|:--|" + ":--|" * len(columns)]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(cells.get(label, "not run") for cells in columns.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="report folders (python -m xgrad.report --out)")
    parser.add_argument("--base", type=Path, default=ROOT, help="links are relative to this folder (default: repo)")
    parser.add_argument("--steps", type=float, nargs="+", default=None,
                        help="only these prediction horizons s (default: all, a column each)")  # fmt: skip
    parser.add_argument("--optimizers", nargs="+", default=None,
                        help="only these optimizers' rows, e.g. sgdm adamw (default: all)")  # fmt: skip
    args = parser.parse_args(argv)
    sys.stdout.write(results_table(args.reports, args.base, args.steps, args.optimizers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
