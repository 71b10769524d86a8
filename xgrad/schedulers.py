"""Learning-rate schedules as a factor of the base lr over (fractional) epochs, with optional linear warmup.

One ``LambdaLR`` serves every schedule: it advances once per epoch (``interval: epoch``) or once per optimizer
step (``interval: step``, the schedule then sees fractional epochs), so milestones are always given in epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["SCHEDULES", "create_scheduler"]

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
    gamma, constant = float(cfg["gamma"]), cfg.get("constant_epochs", 0)
    if not gamma > 0:
        raise ValueError(f"invalid scheduler.gamma={gamma!r}: accepted > 0")
    if isinstance(constant, bool) or not isinstance(constant, int) or constant < 0:
        raise ValueError(f"invalid scheduler.constant_epochs={constant!r}: accepted an integer >= 0")
    return lambda e: gamma ** max(0, math.floor(e + 1e-9) + 1 - constant)


SCHEDULES: dict[str, Callable[[Mapping[str, Any], int], Schedule]] = {
    "multistep": _multistep,
    "cosine": _cosine,
    "constant": _constant,
    "exponential": _exponential,
}


def create_scheduler(
    optimizer: Optimizer, cfg: Mapping[str, Any], epochs: int, steps_per_epoch: int
) -> tuple[LambdaLR, str]:
    """Build the schedule ``cfg.name`` and return it with its interval (``"epoch"`` or ``"step"``)."""
    name = cfg["name"]
    if name not in SCHEDULES:
        raise ValueError(f"unknown scheduler {name!r}: known schedulers are {sorted(SCHEDULES)}")
    interval = cfg.get("interval", "epoch")
    if interval not in ("epoch", "step"):
        raise ValueError(f"invalid scheduler.interval={interval!r}: accepted 'epoch' or 'step'")
    warmup = float(cfg.get("warmup_epochs", 0))
    if warmup < 0:
        raise ValueError(f"invalid scheduler.warmup_epochs={warmup!r}: accepted >= 0")
    schedule = SCHEDULES[name](cfg, epochs)
    per_epoch = steps_per_epoch if interval == "step" else 1

    def factor(count: int) -> float:
        epoch = count / per_epoch
        ramp = min(1.0, (epoch + 1 / per_epoch) / warmup) if warmup > 0 else 1.0
        return ramp * schedule(epoch)

    return LambdaLR(optimizer, factor), interval
