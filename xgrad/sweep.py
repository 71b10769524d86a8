"""Hydra callbacks of the runner: the end of a multirun (one screen saying how many jobs completed, diverged,
failed or were skipped, and where to look), and what a single run's folder held before Hydra made it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

__all__ = ["EVENTS", "RunFolderGuard", "SweepSummary", "record_event", "remove_created", "summarize_sweep"]

# Jobs of a sweep that wrote nothing into their run folder (already done, another process's, another
# configuration's, or a disk too full for a summary) say so here, one JSON line each, for the summary: every job
# counts once, also two spellings of one run in one sweep.
EVENTS = ".xgrad-sweep-events.jsonl"
BUSY = "running elsewhere"  # the status of a job skipped because another process runs in its folder
REFUSED = "refused"  # ... because its folder holds a run of another configuration (counts as a failure)


def record_event(sweep_dir: Path, folder: Path, status: str, error: str) -> None:
    """Append one skipped job to the sweep's event file (one short ``O_APPEND`` write: safe across processes)."""
    line = json.dumps({"time": time.time(), "folder": str(folder), "status": status, "error": error}) + "\n"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(sweep_dir / EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _events(sweep_dir: Path, since: float) -> list[dict[str, Any]]:
    path = sweep_dir / EVENTS
    events = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("time", 0) >= since:
                    events.append(event)
    return events


def summarize_sweep(sweep_dir: Path, since: float = 0.0) -> tuple[Counter, list[tuple[Path, dict[str, Any]]]]:
    """Count the statuses of the jobs of ``sweep_dir`` launched since ``since`` (a timestamp): the summaries
    written since, and the events of jobs that wrote none (a job skipped as already done counts as its status).

    Returns the counts and the jobs that did not complete (with their summaries or events).
    """
    counts: Counter = Counter()
    problems = []
    events = _events(sweep_dir, since)
    elsewhere = {event["folder"] for event in events if event["status"] == BUSY}  # another process writes there
    for path in sorted(sweep_dir.rglob("summary.json")):
        if path.stat().st_mtime < since:
            continue
        try:
            summary = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            summary = None
        if not isinstance(summary, dict):
            summary = {"status": "unreadable"}
        status = summary.get("status", "unknown")
        if status == "running" and str(path.parent) in elsewhere:  # the other process's run: counted by its event
            continue
        counts[status] += 1
        if status != "completed":
            problems.append((path.parent, summary))
    for event in events:
        counts[event["status"]] += 1
        if event["status"] != "completed":
            problems.append((Path(event["folder"]), event))
    return counts, problems


class SweepSummary(Callback):
    """Hydra callback: print the sweep's outcome and exit non-zero if a job failed."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - 1.0  # file times can be coarser than the clock

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        counts, problems = summarize_sweep(sweep_dir, since=self.started)
        total = sum(counts.values())
        print(f"\nsweep {sweep_dir}: {total} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        for folder, summary in problems:
            error = summary.get("error", "")
            print(f"  {summary.get('status', '?'):<10} {folder}" + (f"\n             {error}" if error else ""))
        if counts.get(BUSY, 0):
            print(f"  ({counts[BUSY]} skipped: another process runs in their folders; relaunch when it ends)")
        print(f"results: {sweep_dir} (python -m xgrad.report {sweep_dir})")
        if counts.get("failed", 0) or counts.get("unreadable", 0) or counts.get(REFUSED, 0):
            sys.exit(1)


# ----------------------------------------------------------------------------------- a single run's folder


@dataclass
class _Before:
    """What a run folder held before Hydra made it: its files and folders, and the contents of ``.hydra/``."""

    existed: bool
    top: Path  # the highest folder this launch may create (the folder itself when it existed)
    paths: set[str] = field(default_factory=set)
    hydra_files: dict[str, bytes] = field(default_factory=dict)


_BEFORE: dict[Path, _Before] = {}


def _snapshot(folder: Path) -> _Before:
    if not folder.exists():
        top = folder
        while not top.parent.exists():
            top = top.parent
        return _Before(existed=False, top=top)
    paths = {str(p.relative_to(folder)) for p in _launch_paths(folder)}
    hydra = {str(p.relative_to(folder)): p.read_bytes() for p in (folder / ".hydra").glob("*") if p.is_file()}
    return _Before(existed=True, top=folder, paths=paths, hydra_files=hydra)


def _launch_paths(folder: Path) -> list[Path]:
    """Where a launch writes: entries of the folder and of its ``.hydra/`` (not the whole tree of, say, a home)."""
    hydra = folder / ".hydra"
    inner = list(hydra.iterdir()) if hydra.is_dir() and not hydra.is_symlink() else []
    return [*inner, *folder.iterdir()]


class RunFolderGuard(Callback):
    """Hydra callback: note what a single run's folder held before Hydra made it and wrote into it.

    A rejected run then removes only what its launch created (:func:`remove_created`), never a folder or file
    that was there before (say, someone's logs in a folder given as ``hydra.run.dir``).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra does next, to resolve hydra.run.dir
        folder = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir"))))
        _BEFORE[folder] = _snapshot(folder)


def remove_created(folder: Path) -> None:
    """Undo what this launch made in ``folder``: remove what it created, restore Hydra's files it overwrote.

    Does nothing when the folder's state before the launch is unknown (not a single run started by Hydra).
    """
    before = _BEFORE.get(Path(os.path.abspath(folder)))
    if before is None:
        return
    if not before.existed:
        shutil.rmtree(folder, ignore_errors=True)
        for parent in folder.parents:  # the folders made above it, while empty (a concurrent run may use them)
            if parent == before.top.parent:
                break
            with contextlib.suppress(OSError):
                parent.rmdir()
        return
    for path in _launch_paths(folder):
        if str(path.relative_to(folder)) in before.paths:
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for name, data in before.hydra_files.items():
        with contextlib.suppress(OSError):
            (folder / name).write_bytes(data)
