"""Errors of the experiment suite that end a run with a one-line message instead of a traceback."""

from __future__ import annotations

__all__ = ["ConfigError", "ResumeError"]


class ConfigError(ValueError):
    """The configuration asks for something invalid; the message names the value and the accepted ones."""


class ResumeError(RuntimeError):
    """A run folder's checkpoint cannot be resumed from; the message says how to start over."""
