"""Errors of the experiment suite that end a run with a one-line message instead of a traceback."""

from __future__ import annotations

import traceback

__all__ = [
    "ConfigError",
    "ConfigMismatch",
    "DiskFull",
    "FolderInUse",
    "ResumeError",
    "RunFolderError",
    "error_text",
]


class ConfigError(ValueError):
    """The configuration asks for something invalid; the message names the value and the accepted ones."""


class ResumeError(RuntimeError):
    """A run folder's checkpoint cannot be resumed from; the message says how to start over."""


class RunFolderError(RuntimeError):
    """The run folder belongs to something else (another configuration, another process): nothing is written."""


class ConfigMismatch(RunFolderError):
    """The run folder holds a run of another configuration; the message lists the differing keys."""


class FolderInUse(RunFolderError):
    """Another process is running in the run folder; the message says which (pid, host)."""


class DiskFull(RuntimeError):
    """A write found no space left on its device; what was written before it is intact."""


def error_text(error: BaseException) -> str:
    """``Type: message`` of an exception, as recorded in a failed run's ``summary.json``."""
    return "".join(traceback.format_exception_only(type(error), error)).strip()
