"""The run folder: atomic writes of metrics.csv, summary.json and checkpoints, and reading them back.

Everything is written to a temporary file in the same folder and renamed over the target, so a killed run
never leaves a half-written file behind: readers see either the old version or the new one.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import errno
import fcntl
import io
import json
import math
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "SCHEMA_VERSION",
    "SUMMARY",
    "atomic_write",
    "hold",
    "read_config",
    "read_metrics",
    "read_summary",
    "read_summary_if_valid",
    "remove_stale_temporaries",
    "save_checkpoint",
    "write_config",
    "write_metrics",
    "write_summary",
]

SCHEMA_VERSION = 1
METRICS, SUMMARY, CHECKPOINT = "metrics.csv", "summary.json", "checkpoint.pt"
CONFIG = "config.yaml"  # the resolved configuration the run started with; written once, when it starts
LOCK = ".lock"  # held (flock) by the one process running in the folder; names it (pid, host) while held
_UMASK = os.umask(0)  # reading the umask means setting it: done once, at import, before any thread starts
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary sibling, fsync it, and rename it into place.

    A full disk raises :class:`~xgrad.errors.DiskFull` naming ``path``; the earlier version of it stays.
    """
    from xgrad.errors import DiskFull

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFull(_disk_full(path)) from e
        raise
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for colleagues too
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise DiskFull(_disk_full(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _disk_full(path: Path) -> str:
    return (
        f"disk full (no space left on device) while writing {path}: free some space, then re-run the same "
        "command to resume from the last saved epoch"
    )


class _WriteErrors:
    """A file whose write errors are kept: ``torch.save`` turns them into a C++ "enforce fail" message."""

    def __init__(self, file: io.BufferedWriter) -> None:
        self.file, self.error = file, None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


@contextlib.contextmanager
def hold(folder: Path) -> Iterator[None]:
    """Hold ``folder`` for this process: one run per folder at a time.

    An exclusive ``fcntl.flock`` on ``folder/.lock``, held until the block ends. The kernel drops the lock of a
    process that dies, so a stale lock file (a killed run) is simply taken over. Raises
    :class:`~xgrad.errors.FolderInUse` naming the holder (pid, host, since when) when another process holds it.
    """
    from xgrad.errors import FolderInUse

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise FolderInUse(
                f"{folder} is in use by {holder}: one run per folder; wait for it to end (or stop it), "
                "or run into another folder"
            ) from None
        since = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} (since {since})\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the file stays: removing it would race with a process about to lock it
    finally:
        os.close(fd)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def write_summary(folder: Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` (flat keys; NaN becomes null, infinities strings, so it stays valid JSON)."""
    text = json.dumps({k: _json_safe(v) for k, v in summary.items()}, indent=2, sort_keys=False) + "\n"
    atomic_write(folder / SUMMARY, lambda f: f.write(text.encode()))


def read_summary(folder: Path) -> dict[str, Any] | None:
    """The run's summary, or None when there is none yet (``ValueError`` if it is not a JSON object)."""
    path = folder / SUMMARY
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(summary, dict):
        raise ValueError(
            f"{path} is not a run summary (a JSON object), it holds {type(summary).__name__} {summary!r:.40}"
        )
    return summary


def read_summary_if_valid(folder: Path) -> dict[str, Any] | None:
    """The run's summary, or None when there is none or it is not a JSON object (e.g. cut short by a crash)."""
    try:
        return read_summary(folder)
    except ValueError:
        return None


def write_config(folder: Path, config: dict[str, Any]) -> None:
    """Record the resolved configuration a run starts with (``config.yaml``; never rewritten while it runs on)."""
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
    atomic_write(folder / CONFIG, lambda f: f.write(text.encode()))


def read_config(folder: Path) -> dict[str, Any] | None:
    """The recorded configuration, or None when there is none (``ValueError`` when it is not a YAML mapping)."""
    path = folder / CONFIG
    if not path.exists():
        return None
    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a configuration (a YAML mapping)")
    return config


def write_metrics(folder: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.csv`` with all epochs so far (one row per epoch; columns in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _format(v) for k, v in row.items()})
    atomic_write(folder / METRICS, lambda f: f.write(buffer.getvalue().encode()))


def _format(value: Any) -> Any:
    return repr(value) if isinstance(value, float) else value


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.csv`` with numbers parsed (empty list when absent)."""
    path = folder / METRICS
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text if text != "" else None


RUN_FILES = (CHECKPOINT, METRICS, SUMMARY, CONFIG)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of writes into ``folder`` that a killed process left behind; return them.

    Only names :func:`atomic_write` makes for the run's own files (``.summary.json.<random>.tmp``) are removed;
    call this only while holding the folder (no other process writes there).
    """
    stale = [p for name in RUN_FILES for p in folder.glob(f".{name}.*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Atomically save ``checkpoint.pt``."""

    def write(f: io.BufferedWriter) -> None:
        file = _WriteErrors(f)
        try:
            torch.save(state, file)
        except RuntimeError:
            if file.error is not None:  # the real cause (e.g. a full disk), not PyTorch's rewording of it
                raise file.error from None
            raise

    atomic_write(folder / CHECKPOINT, write)
