"""What a run is: its resolved configuration, less the keys that do not change its results.

``optimizer.lr=1`` and ``optimizer.lr=1.0``, or a value set by a preset and the same value typed, are one run:
they have one identity, one folder name and one ``config.yaml``. The seed is part of the run folder's path
(``<name>/seed=<seed>``), so it is not part of the identity either.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "MAX_NAME_BYTES",
    "NON_IDENTITY_KEYS",
    "PRESET_TABLES",
    "config_id",
    "differences",
    "identity",
    "pair_id",
    "run_name",
]

# Top-level keys that say where or how a run computes or reports, not what it computes.
NON_IDENTITY_KEYS = frozenset(
    {"seed", "sweep", "data_root", "device", "threads", "logger", "progress", "resume", "hydra"}
)
# Per-optimizer tables of the presets (``optimizer.lr: ${lr_table.${optimizer.name}}``): what a run computes with
# them is already in the keys they resolve into, so an entry for another optimizer does not make another run.
PRESET_TABLES = frozenset({"lr_table", "eps_table", "wd_table"})
# Keys that tell a run with weight prediction from its baseline: the report pairs runs equal in all others.
# Every key that only the prediction arm reads belongs here, or such a run would have no baseline to pair with.
PREDICTION_KEYS = ("predict", "predict_steps", "predict_method", "predict_weight_decay", "prediction_error_every")
MAX_NAME_BYTES = 200  # file systems allow 255 bytes per folder name


def _canonical(value: Any) -> Any:
    """One spelling per value: an integral float is the int (``1.0`` is ``1``), tuples are lists."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def identity(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved configuration of ``cfg`` without :data:`NON_IDENTITY_KEYS` and :data:`PRESET_TABLES`,
    canonically spelled."""
    dropped = NON_IDENTITY_KEYS | PRESET_TABLES
    kept = [k for k in cfg if k not in dropped]  # before resolving: hydra's own needs its runtime
    if isinstance(cfg, DictConfig):
        return _canonical({k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                           for k in kept})  # fmt: skip
    return _canonical({k: cfg[k] for k in kept})


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def config_id(ident: Mapping[str, Any]) -> str:
    """A short hash of an identity: the seeds of one configuration share it."""
    return _digest(ident)


def pair_id(ident: Mapping[str, Any]) -> str:
    """A short hash of an identity without prediction on/off and horizon: a run and its baseline share it."""
    return _digest({k: v for k, v in ident.items() if k not in PREDICTION_KEYS})


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, recorded value, current value)`` for every dotted key where two identities differ (absent: ``...``)."""
    a, b = _flatten(recorded), _flatten(current)
    return [(k, a.get(k, ...), b.get(k, ...)) for k in sorted(a.keys() | b.keys()) if a.get(k, ...) != b.get(k, ...)]


# ----------------------------------------------------------------------------------- folder names


def _spell(value: Any) -> str:
    """A value as the folder name shows it: booleans lower case, floats as Python prints them, lists compact."""
    value = _canonical(OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value)
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_spell(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_spell(v)}" for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, float) else str(value)


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    hydra = GlobalHydra.instance().hydra
    assert hydra is not None, "run_name needs an initialised Hydra (inside @hydra.main or initialize_config_dir)"
    return hydra.compose_config(config_name, list(overrides), run_mode=RunMode.RUN, from_shell=False)


def _top_key(override: Any) -> str:
    return override.key_or_group.replace("/", ".").split(".")[0]


@functools.lru_cache(maxsize=256)
def _name(overrides: tuple[str, ...], config_name: str) -> str:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = [
        o for o in OverridesParser.create().parse_overrides(list(overrides)) if _top_key(o) not in NON_IDENTITY_KEYS
    ]
    full = _compose(config_name, [o.input_line for o in parsed])
    target = identity(full)
    # Drop, one at a time, every override without which the configuration stays the same: a typed default, a
    # value a preset already sets, or a group's default choice.
    kept = list(parsed)
    for override in parsed:
        trial = [o for o in kept if o is not override]
        try:
            same = identity(_compose(config_name, [o.input_line for o in trial])) == target
        except Exception:  # without it the overrides do not even compose: it is needed
            same = False
        if same:
            kept = trial
    choices = full.hydra.runtime.choices
    parts = []
    for o in kept:
        key = o.key_or_group
        if o.is_delete():
            parts.append(f"~{key}")
        elif key in choices:
            parts.append(f"{key}={choices[key]}")
        else:
            parts.append(f"{key}={_spell(OmegaConf.select(full, key))}")
    name = ",".join(sorted(parts))
    if len(name.encode()) > MAX_NAME_BYTES:
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = name.encode()[: MAX_NAME_BYTES - 13].decode(errors="ignore") + "~" + digest
    return name or "default"


def run_name(overrides: Iterable[str], config_name: str = "config") -> str:
    """The folder name of a run: the overrides that change its configuration, each spelled by its resolved value.

    Overrides of :data:`NON_IDENTITY_KEYS` are left out, and so is every override that changes nothing (a typed
    default, a value the chosen preset already sets); the rest are sorted, booleans lower case, numbers as
    Python prints them (``optimizer.lr=1e-3`` and a sweep's ``0.001`` both give ``optimizer.lr=0.001``). A name
    too long for the file system keeps its first part and a hash of the whole. Nothing left: ``default``.
    Needs an initialised Hydra (it composes the configuration with and without each override).
    """
    return _name(tuple(str(o) for o in overrides), config_name)
