"""Learning-rate schedules as a factor of the base lr over (fractional) epochs, with optional linear warmup.

One ``LambdaLR`` serves every schedule: it advances once per epoch (``interval: epoch``) or once per optimizer
step (``interval: step``, the schedule then sees fractional epochs), so milestones are always given in epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from xgrad.hparams import Choice, Float, IncreasingInts, Int, Param, Str

__all__ = ["COMMON", "SCHEDULES", "ScheduleSpec", "create_scheduler"]

Schedule = Callable[[float], float]


def _multistep(cfg: Mapping[str, Any], epochs: int) -> Schedule:
    milestones, gamma = sorted(float(m) for m in cfg["milestones"]), float(cfg["gamma"])
    return lambda e: gamma ** sum(e >= m for m in milestones)


def _cosine(cfg: Mapping[str, Any], epochs: int) -> Schedule:
    warmup, floor = float(cfg.get("warmup_epochs", 0)), float(cfg.get("min_lr_factor", 0.0))
    span = max(epochs - warmup, 1e-12)
    return lambda e: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(max(e - warmup, 0.0) / span, 1.0)))


def _constant(cfg: Mapping[str, Any], epochs: int) -> Schedule:
    return lambda e: 1.0


def _exponential(cfg: Mapping[str, Any], epochs: int) -> Schedule:
    # The base lr for the first `constant_epochs` epochs, then x gamma at the start of every later epoch
    # (Zaremba et al. 2014: constant_epochs 4, gamma 0.5). Whole epochs only, also with interval: step.
    gamma, constant = float(cfg["gamma"]), int(cfg.get("constant_epochs", 0))
    return lambda e: gamma ** max(0, math.floor(e + 1e-9) + 1 - constant)


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule: ``build(cfg, epochs)`` gives the lr factor per (fractional) epoch; ``hyperparameters``
    declares the keys of its config entry beyond the common ones (:data:`COMMON`), with types and ranges, for
    the config schema (xgrad/schema.py), which checks them before a run starts."""

    build: Callable[[Mapping[str, Any], int], Schedule]
    hyperparameters: dict[str, Param] = field(default_factory=dict)


#: The keys every schedule takes: its name, a linear warmup and when it advances.
COMMON: dict[str, Param] = {
    "name": Str(),
    "warmup_epochs": Float(ge=0),
    "interval": Choice("epoch", "step"),
}

SCHEDULES: dict[str, ScheduleSpec] = {
    "multistep": ScheduleSpec(_multistep, {"milestones": IncreasingInts(ge=1), "gamma": Float(gt=0)}),
    "cosine": ScheduleSpec(_cosine, {"min_lr_factor": Float(ge=0, le=1)}),
    "constant": ScheduleSpec(_constant),
    "exponential": ScheduleSpec(_exponential, {"gamma": Float(gt=0), "constant_epochs": Int(ge=0)}),
}


def create_scheduler(
    optimizer: Optimizer, cfg: Mapping[str, Any], epochs: int, steps_per_epoch: int
) -> tuple[LambdaLR, str]:
    """Build the schedule ``cfg.name`` and return it with its interval (``"epoch"`` or ``"step"``).

    ``cfg`` is a checked config entry (the config schema refuses unknown names and bad values first).
    """
    interval = cfg.get("interval", "epoch")
    warmup = float(cfg.get("warmup_epochs", 0))
    schedule = SCHEDULES[cfg["name"]].build(cfg, epochs)
    per_epoch = steps_per_epoch if interval == "step" else 1

    def factor(count: int) -> float:
        epoch = count / per_epoch
        ramp = min(1.0, (epoch + 1 / per_epoch) / warmup) if warmup > 0 else 1.0
        return ramp * schedule(epoch)

    return LambdaLR(optimizer, factor), interval
