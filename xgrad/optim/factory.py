"""Build any supported optimizer from a name, with validated hyperparameters (a timm-style registry)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .adabelief import AdaBelief
from .adam3 import AdaM3

__all__ = ["OPTIMIZERS", "OptimizerSpec", "create_optimizer", "register_optimizer"]


@dataclass(frozen=True)
class OptimizerSpec:
    """How a name maps to an optimizer class: its defaults and the range check of its momentum."""

    cls: type[Optimizer]
    defaults: dict[str, Any] = field(default_factory=dict)
    #: ``(low, high, text)`` with low < momentum < high required, or None when momentum is not accepted.
    momentum_range: tuple[float, float, str] | None = None
    can_predict: bool = True


OPTIMIZERS: dict[str, OptimizerSpec] = {}


def register_optimizer(name: str, spec: OptimizerSpec) -> None:
    """Make ``create_optimizer(name, ...)`` build ``spec.cls``; for a new optimizer, also register a
    prediction rule with :func:`xgrad.predict.register_rule`."""
    if name in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is already registered")
    OPTIMIZERS[name] = spec


register_optimizer("sgd", OptimizerSpec(torch.optim.SGD, {"momentum": 0.0}, can_predict=False))
register_optimizer("sgdm", OptimizerSpec(torch.optim.SGD, {"momentum": 0.9}, (0.0, 1.0, "0 < momentum < 1")))
register_optimizer("adam", OptimizerSpec(torch.optim.Adam))
register_optimizer("adamw", OptimizerSpec(torch.optim.AdamW))
register_optimizer("adabelief", OptimizerSpec(AdaBelief))
register_optimizer("adam3", OptimizerSpec(AdaM3))


def _check_range(name: str, value: Any, ok: Callable[[float], bool], accepted: str) -> None:
    try:
        good = ok(float(value))
    except (TypeError, ValueError):
        good = False
    if not good:
        raise ValueError(f"invalid {name}={value!r}: accepted {accepted}")


def _validate(name: str, spec: OptimizerSpec, hp: dict[str, Any]) -> None:
    accepted = [p for p in inspect.signature(spec.cls.__init__).parameters if p not in ("self", "params")]
    for key in hp:
        if key not in accepted:
            raise ValueError(f"unknown hyperparameter {key!r} for optimizer {name!r}: accepted {accepted}")
    if "lr" in hp:
        _check_range("lr", hp["lr"], lambda v: v >= 0, "lr >= 0")
    if "eps" in hp:
        _check_range("eps", hp["eps"], lambda v: v > 0, "eps > 0")
    if "weight_decay" in hp:
        _check_range("weight_decay", hp["weight_decay"], lambda v: v >= 0, "weight_decay >= 0")
    if "betas" in hp:
        betas = hp["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"invalid betas={betas!r}: accepted a pair (beta1, beta2), each in [0, 1)")
        for i, beta in enumerate(betas):
            _check_range(f"betas[{i}]", beta, lambda v: 0 <= v < 1, "0 <= beta < 1")
    if "dampening" in hp:
        _check_range("dampening", hp["dampening"], lambda v: 0 <= v <= 1, "0 <= dampening <= 1")
    if "momentum" in hp:
        if spec.momentum_range is None:
            if float(hp["momentum"]) != 0.0:
                raise ValueError(
                    f"invalid momentum={hp['momentum']!r} for {name!r}: accepted 0 (use 'sgdm' for momentum)"
                )
        else:
            low, high, text = spec.momentum_range
            _check_range("momentum", hp["momentum"], lambda v: low < v < high, text)


def create_optimizer(name: str, params: Iterable[Tensor] | Iterable[dict], **hyperparameters: Any) -> Optimizer:
    """Build the optimizer registered as ``name`` (``sgd, sgdm, adam, adamw, adabelief, adam3``).

    Hyperparameters override the registered defaults and are validated first: a bad value raises a
    ``ValueError`` naming it and the accepted range, an unknown name one that lists the known names.
    ``betas`` may be a list (as configuration files give it).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: known optimizers are {sorted(OPTIMIZERS)}")
    spec = OPTIMIZERS[name]
    hp = {**spec.defaults, **hyperparameters}
    _validate(name, spec, hp)
    if "betas" in hp:
        hp["betas"] = tuple(float(b) for b in hp["betas"])
    return spec.cls(params, **hp)
