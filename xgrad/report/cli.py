"""``python -m xgrad.report RESULT_DIR... [--out DIR] [--reference [CSV]] [--wandb ENTITY/PROJECT]``.

Exit codes: 0 report written; 1 report written but no run was usable (all skipped); 2 bad input (a folder
without any summary.json, an unreadable reference table, W&B unreachable, an --out that is a file, cannot be
written, or holds files the report did not write).

The report writes only its own files into ``--out``: a new or empty folder becomes the report's (its manifest,
``.xgrad-report-files``, lists what it wrote); a rerun replaces and removes only those files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .build import build_report, check_out
from .collect import Collection, ReportError, collect, drop_duplicate_seeds
from .reference import load_reference
from .tuning import TunedStudy, find_studies

__all__ = ["main"]

SHIPPED = "shipped"  # --reference without a path: the reference.csv inside the package


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m xgrad.report",
        description="Turn finished run folders (any folder holding summary.json, searched recursively) into "
        "convergence figures, comparison tables and a cost table, indexed by OUT/README.md.",
    )
    parser.add_argument("result_dirs", nargs="*", metavar="RESULT_DIR", help="folders holding run folders")
    parser.add_argument("--out", default="outputs/report", type=Path, help="output folder (default: %(default)s)")
    parser.add_argument(
        "--reference",
        nargs="?",
        const=SHIPPED,
        default=None,
        metavar="CSV",
        help="show published numbers beside ours: the shipped reference.csv, or CSV",
    )
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read the runs of this W&B project")
    args = parser.parse_args(argv)
    if not args.result_dirs and not args.wandb:
        parser.error("give at least one RESULT_DIR (or --wandb ENTITY/PROJECT)")
    return args


def load(args: argparse.Namespace, studies: list[TunedStudy]) -> Collection:
    """Every run named by the arguments, one per (computation, seed) within each study (see drop_duplicate_seeds)."""
    collection = collect([Path(d) for d in args.result_dirs])
    if args.wandb:
        from .wandb_source import load_wandb

        collection.extend(load_wandb(args.wandb))
    return drop_duplicate_seeds(collection, scopes=[study.folder for study in studies])


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    args = parse_args(argv)
    try:
        check_out(args.out)  # before the runs are read: a wrong --out is said at once
        studies = find_studies([Path(d) for d in args.result_dirs])
        collection = load(args, studies)
        reference = None
        if args.reference is not None:
            reference = load_reference(None if args.reference == SHIPPED else args.reference)
        index = build_report(
            collection, args.out, reference, inputs=sys.argv[1:] if argv is None else argv, studies=studies
        )
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    diverged = sum(r.summary["status"] == "diverged" for r in collection.runs)
    print(f"report: {len(collection.runs)} runs ({diverged} diverged), {len(collection.skipped)} skipped -> {index}")
    for item in collection.skipped:
        print(f"  skipped {item.source}: {item.reason}")
    if not collection.runs:
        print("error: no completed or diverged run to report (all skipped; reasons above)", file=sys.stderr)
        return 1
    return 0
