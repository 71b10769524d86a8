"""Re-run one configuration of a committed report for one epoch and compare with its committed first epoch.

    python scripts/reproduce.py results/cpu_cifar10_resnet20                    # the report's first run
    python scripts/reproduce.py results/cpu_cifar10_resnet20 --run sgdm --data-root ~/.cache/xgrad-shared

The report folder holds ``runs_config.json`` (each run's configuration) and ``runs_epochs.csv`` (its metrics per
epoch), both written by ``python -m xgrad.report``. The chosen run is started with ``python -m xgrad.run`` from
its configuration into a temporary folder, stopped (Ctrl-C, as a user would) once its first epoch is written, and
every metric of that epoch is printed beside the committed one with the difference. Timing columns are not
compared. Exit codes: 0 every metric within the tolerance, 1 a metric differs beyond it (or the re-run failed),
2 bad input.

Tolerance: ``--rtol`` (default 0.02) relative to the committed value. On the same machine, torch build and thread
count a CPU run repeats bit for bit; another CPU or thread count sums in another order, and one epoch of training
amplifies those last-bit differences into visible but small changes of loss and accuracy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xgrad.report.collect import ReportError  # noqa: E402
from xgrad.report.repro import compare, read_committed  # noqa: E402

POLL_SECONDS = 0.2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python scripts/reproduce.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="a report folder (python -m xgrad.report --out)")
    parser.add_argument("--run", default=None, help="the run to re-run: a unique part of its source path")
    parser.add_argument("--rtol", type=float, default=0.02, help="relative tolerance per metric (default 0.02)")
    parser.add_argument("--data-root", default=None, help="where the data set is (default: the run's data_root)")
    parser.add_argument("--device", default="cpu", help="device for the re-run (default cpu)")
    parser.add_argument("--keep", type=Path, default=None, help="re-run into this folder and keep it")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the first epoch")
    args = parser.parse_args(argv)
    if not args.rtol >= 0:
        parser.error(f"--rtol {args.rtol}: accepted a number >= 0")
    return args


def choose(configs: dict, wanted: str | None) -> str:
    """The source of the run to re-run: the one matching ``wanted``, else the first in sorted order."""
    sources = sorted(configs)
    if not sources:
        raise ReportError("the report lists no run configuration")
    if wanted is None:
        return sources[0]
    matches = [s for s in sources if wanted in s]
    if len(matches) != 1:
        shown = "\n  ".join(matches or sources)
        raise ReportError(f"--run {wanted!r} matches {len(matches)} runs; give a unique part of one of:\n  {shown}")
    return matches[0]


def rerun_first_epoch(config: dict, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    """Start the run from ``config`` in ``folder``, stop it after its first epoch, return that epoch's metrics."""
    config = {**config, "resume": False, "progress": "line", "logger": None}  # no trackers, a fresh start
    (folder / "conf").mkdir(parents=True, exist_ok=True)
    (folder / "conf" / "reproduce.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run_dir = folder / "run"
    command = [sys.executable, "-m", "xgrad.run", "--config-dir", str(folder / "conf"), "--config-name", "reproduce",
               f"hydra.run.dir={run_dir}", f"device={args.device}"]  # fmt: skip
    if args.data_root:
        command.append(f"data_root={args.data_root}")
    print("+ " + " ".join(command[1:]), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # Started in the background (nohup, `&`) this process may ignore SIGINT, and the child would inherit that and
    # never stop after its first epoch: it gets the default handling back.
    restore = (lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if os.name == "posix" else None
    proc = subprocess.Popen(command, cwd=folder, env=env, preexec_fn=restore)
    metrics, deadline = run_dir / "metrics.csv", time.monotonic() + args.timeout
    try:
        while proc.poll() is None and not _has_an_epoch(metrics) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        stopped = proc.poll() is None and int(config.get("epochs", 2)) > 1  # a 1-epoch run is left to finish
        if stopped:
            proc.send_signal(signal.SIGINT)  # stops as Ctrl-C does: the files of the finished epoch stay
        proc.wait(timeout=120)
        if stopped:
            print("(stopped by this check after its first epoch: the run's 'interrupted' lines above are expected)")
    finally:
        if proc.poll() is None:
            proc.kill()
    if not _has_an_epoch(metrics):
        raise RuntimeError(f"the re-run wrote no epoch (exit code {proc.returncode}; see its output above)")
    return pd.read_csv(metrics).iloc[0].to_dict()


def _has_an_epoch(metrics: Path) -> bool:
    try:
        return metrics.is_file() and len(pd.read_csv(metrics)) >= 1
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        epochs, configs = read_committed(args.report)
        source = choose(configs, args.run)
        first = epochs[(epochs["source"] == source) & (epochs["epoch"] == 1)]
        if first.empty:
            raise ReportError(f"{source}: no committed first epoch in the report's runs_epochs.csv")
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    committed = first.iloc[0].drop(["source", "seed"]).to_dict()
    print(f"re-running {source} (overrides: {configs[source]['overrides'] or 'none'}) for one epoch")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="xgrad-reproduce-"))
    try:
        now = rerun_first_epoch(configs[source]["config"], args, folder)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    table = compare(committed, now, args.rtol)
    with pd.option_context("display.float_format", "{:.6g}".format, "display.width", 120):
        print(f"\nfirst epoch of {source}: committed vs now (tolerance: relative {args.rtol:g})")
        print(table.to_string(index=False))
    bad = table[~table["within"]]
    if table.empty:
        print("error: no metric in common to compare", file=sys.stderr)
        return 1
    if len(bad):
        print(f"\nDIFFERENT: {', '.join(bad['metric'])} beyond the tolerance", file=sys.stderr)
        return 1
    print(f"\nreproduced: all {len(table)} metrics within the tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
