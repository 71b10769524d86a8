"""What a configuration value accepts: a type and range, and the words that describe it in an error.

The one way to declare a key: the model, schedule and optimizer registries declare their entries' keys with
these (``register_model(..., hyperparameters=...)`` in xgrad/models, ``SCHEDULES`` in xgrad/schedulers.py,
``register_optimizer`` in xgrad/optim/factory.py, which pairs each with the suite's default in a
:class:`Default`), the config schema (xgrad/schema.py) its top-level, dataset and logger keys, and the schema
checks every key against them before a run starts. A check never raises: a value of the wrong type is simply
not accepted::

    {"num_layers": Int(ge=1), "dropout": Float(ge=0, lt=1), "tie_weights": Bool(), "interval": Choice("epoch", "step")}

This module needs only the standard library (no Hydra, no torch), so the method layer (xgrad/optim) uses it too.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Bool",
    "Choice",
    "Default",
    "Float",
    "IncreasingInts",
    "Int",
    "ListOf",
    "Nullable",
    "Param",
    "Str",
    "StrList",
    "Table",
    "check_values",
    "show",
    "unknown_key",
]


@dataclass(frozen=True)
class Param:
    """One value's check (``accepts(value) -> bool``) and what it accepts, in words (``"a number > 0"``)."""

    accepts: Callable[[Any], bool]
    accepted: str

    def error(self, key: str, value: Any) -> str | None:
        """None if ``value`` is accepted, else the one-line error ``invalid KEY=VALUE: accepted ...``."""
        try:
            ok = bool(self.accepts(value))
        except (TypeError, ValueError, OverflowError):
            ok = False
        return None if ok else f"invalid {key}={show(value)}: accepted {self.accepted}"


@dataclass(frozen=True)
class Default:
    """A key's accepted values (``param``) and the value used when a configuration leaves the key out."""

    param: Param
    value: Any


def show(value: Any) -> str:
    """A value as a config spells it: ``true``, ``null``, ``'maybe'`` (a string), ``[1, 2]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> tuple[Callable, str]:
    tests = [(gt, ">", lambda v, b: v > b), (ge, ">=", lambda v, b: v >= b),
             (lt, "<", lambda v, b: v < b), (le, "<=", lambda v, b: v <= b)]  # fmt: skip
    active = [(bound, op, test) for bound, op, test in tests if bound is not None]
    text = " and ".join(f"{op} {bound:g}" for bound, op, _ in active)
    return (lambda v: all(test(v, bound) for bound, _, test in active)), text


def Bool() -> Param:
    """true or false (not a string such as ``maybe``, nor 0/1)."""
    return Param(lambda v: isinstance(v, bool), "true or false")


def Int(gt: int | None = None, ge: int | None = None, lt: int | None = None, le: int | None = None) -> Param:
    """An integer (not a bool, not 2.0) within the given bounds."""
    within, text = _bounds(gt, ge, lt, le)
    return Param(lambda v: _is_int(v) and within(v), f"an integer {text}".strip())


def Float(gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None) -> Param:
    """A finite number (int or float, not a bool, not NaN or infinite) within the given bounds."""
    within, text = _bounds(gt, ge, lt, le)
    return Param(lambda v: _is_number(v) and within(v), f"a finite number {text}".strip())


def Choice(*values: Any) -> Param:
    """One of ``values`` (compared by type and value: ``true`` is not ``"true"``)."""
    words = ", ".join("true" if v is True else "false" if v is False else str(v) for v in values)
    return Param(lambda v: any(type(v) is type(c) and v == c for c in values), f"one of {words}")


def Str() -> Param:
    """A non-empty string."""
    return Param(lambda v: isinstance(v, str) and v != "", "a non-empty string")


def Nullable(param: Param) -> Param:
    """null, or what ``param`` accepts."""
    return Param(lambda v: v is None or param.accepts(v), f"null or {param.accepted}")


@dataclass(frozen=True)
class _Items(Param):
    """:func:`ListOf`'s check, which also knows its element's check to name a bad element."""

    item: Param
    length: int

    def error(self, key: str, value: Any) -> str | None:
        """A list of the right length names its first bad element (``invalid betas[1]=1.5: accepted ...``)."""
        if isinstance(value, (list, tuple)) and len(value) == self.length:
            for i, x in enumerate(value):
                error = self.item.error(f"{key}[{i}]", x)
                if error:
                    return error
        return super().error(key, value)


def ListOf(item: Param, length: int) -> Param:
    """A list of ``length`` values, each accepted by ``item`` (``betas: [0.9, 0.999]``)."""
    return _Items(lambda v: isinstance(v, (list, tuple)) and len(v) == length and all(item.accepts(x) for x in v),
                  f"a list of {length} elements, each {item.accepted}", item, length)  # fmt: skip


def IncreasingInts(ge: int = 1) -> Param:
    """A list of strictly increasing integers >= ``ge`` (``milestones: [100, 150]``; may be empty)."""

    def accepts(v: Any) -> bool:
        return (
            isinstance(v, (list, tuple))
            and all(_is_int(x) and x >= ge for x in v)
            and all(a < b for a, b in itertools.pairwise(v))
        )

    return Param(accepts, f"a list of strictly increasing integers >= {ge}")


def StrList() -> Param:
    """A list of strings."""
    return Param(lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v), "a list of strings")


def Table() -> Param:
    """A mapping of names to values, read only through interpolations (``lr_table: {sgdm: 2.0, ...}``)."""
    return Param(lambda v: isinstance(v, Mapping), "a mapping of names to values")


def check_values(prefix: str, values: Mapping[str, Any], params: Mapping[str, Param], where: str) -> None:
    """Raise ``ValueError`` for the first key of ``values`` that ``params`` does not declare or does not accept.

    ``prefix`` goes before every key in the message (``"optimizer."``); ``where`` says whose keys these are.
    """
    for key, value in values.items():
        if key not in params:
            raise ValueError(unknown_key(prefix + key, value, sorted(params), where))
        error = params[key].error(prefix + key, value)
        if error:
            raise ValueError(error)


def unknown_key(key: str, value: Any, known: list[str], where: str) -> str:
    """The one-line error for an undeclared key, with the accepted keys and the likely intended one."""
    import difflib

    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f" (did you mean {key[: len(key) - len(leaf)]}{close[0]}?)" if close else ""
    return f"unknown key {key}={show(value)}{hint}: the keys of {where} are {', '.join(known) or '(none)'}"
