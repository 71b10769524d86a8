"""The one optimizer registry: everything about each optimizer the suite can build, in one entry.

An entry (:class:`OptimizerSpec`) holds

- ``build``: the class, or a function ``build(params, **hyperparameters) -> Optimizer``; for a class from an
  optional package, :func:`optional` imports it on first use and names the extra to install if it is missing;
- ``hyperparameters``: name -> :class:`~xgrad.hparams.Default` (an :mod:`xgrad.hparams` ``Param``, the values
  accepted, paired with the suite's default). These are the only keys a config may set; the defaults come from
  the method's paper or official code (``source``);
- ``prediction``: how ``WeightPredictor`` predicts it: ``"rule"`` (a rule registered in :mod:`xgrad.predict`),
  ``"extrapolate"`` (the last update repeated, ``theta_t + s * lr_next / lr_last * (theta_t - theta_{t-1})``)
  or ``"none"`` (its rule has no direction to predict from: plain SGD, which only ``method="extrapolate"``
  predicts);
- ``param_groups``: given the model, how its parameters split into groups (Muon: hidden matrices to Muon, the
  rest to AdamW), or None for one group of all parameters;
- ``label`` (tables and figures), ``source`` (where the defaults come from) and ``extra`` (the pip extra that
  provides it, if any).

:func:`create_optimizer` builds an entry with validated hyperparameters, and the report reads ``label``. The
config schema (xgrad/schema.py) checks ``optimizer.*`` before a run starts, from the entry alone: a key not in
``hyperparameters`` is refused, every value goes through its ``Param`` (so each range and type, and whether
null is accepted, must be declared here, in the same terms as the models' and schedules' keys), then ``checks``
(one key's rule the ranges cannot express), and ``prediction`` decides ``predict=true``. Adding an
optimizer is one :func:`register_optimizer` call plus a ``conf/optimizer/<name>.yaml`` listing the same defaults.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from xgrad.hparams import Bool, Choice, Default, Float, Int, ListOf, Nullable, Param, check_values

from .adabelief import AdaBelief
from .adam3 import AdaM3
from .muon import MuonWithAdamW, muon_param_groups

__all__ = [
    "OPTIMIZERS",
    "MissingExtraError",
    "OptimizerSpec",
    "create_optimizer",
    "optional",
    "register_optimizer",
]


class MissingExtraError(ImportError):
    """An optimizer's optional package is not installed (the message names the extra to install)."""


@dataclass(frozen=True)
class OptimizerSpec:
    """Everything about one optimizer (see the module docstring)."""

    build: Callable[..., Optimizer]
    hyperparameters: dict[str, Default]
    prediction: Literal["rule", "extrapolate", "none"]
    label: str
    source: str
    extra: str | None = None
    param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None
    #: The class decays as ``theta *= 1 - lr * weight_decay`` before its update without saying so in its groups:
    #: create_optimizer marks them ``decoupled_weight_decay=True``, so that weight prediction treats the decay as
    #: AdamW's (left out unless ``predict_weight_decay``) instead of repeating it as part of the update.
    decoupled_decay: bool = False
    #: Raised for a value the ranges cannot express (e.g. SGD without momentum given a momentum): (key, check, text).
    checks: tuple[tuple[str, Callable[[Any], bool], str], ...] = field(default_factory=tuple)

    @property
    def can_predict(self) -> bool:
        """Whether ``predict=true`` works with ``predict_method`` auto (every optimizer predicts with extrapolate)."""
        return self.prediction != "none"

    @property
    def params(self) -> dict[str, Param]:
        """What each hyperparameter accepts (the schema and :func:`create_optimizer` check values against it)."""
        return {name: hp.param for name, hp in self.hyperparameters.items()}

    @property
    def defaults(self) -> dict[str, Any]:
        """The suite's default hyperparameters (each entry's ``Default.value``)."""
        return {name: hp.value for name, hp in self.hyperparameters.items()}


OPTIMIZERS: dict[str, OptimizerSpec] = {}


def register_optimizer(name: str, spec: OptimizerSpec) -> None:
    """Make ``create_optimizer(name, ...)`` build ``spec.build``; a new optimizer with ``prediction="rule"``
    also needs a rule registered with :func:`xgrad.predict.register_rule`."""
    if name in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is already registered")
    if spec.prediction not in ("rule", "extrapolate", "none"):
        raise ValueError(f"invalid prediction={spec.prediction!r} for {name!r}: accepted rule, extrapolate or none")
    OPTIMIZERS[name] = spec


def optional(module: str, attribute: str, extra: str) -> Callable[..., Optimizer]:
    """``module.attribute`` (an optimizer class of an optional package), imported when first called.

    A missing package raises :class:`MissingExtraError` saying ``pip install 'xgrad[<extra>]'``.
    """

    def build(params: Any, **hyperparameters: Any) -> Optimizer:
        try:
            cls = getattr(importlib.import_module(module), attribute)
        except ImportError as e:
            raise MissingExtraError(
                f"{module}.{attribute} is not installed: pip install 'xgrad[{extra}]' (or pip install {e.name})"
            ) from e
        return cls(params, **hyperparameters)

    build.__qualname__ = build.__name__ = f"{module}.{attribute}"
    return build


# ----------------------------------------------------------------------------------------------- entries
# Common ranges. Each entry lists every key its config may set, with the default that config file repeats.
_LR = Float(gt=0)  # 0 would train nothing, and a run would say it completed
_NONNEGATIVE = Float(ge=0)  # weight decay, momentum decay, ...
_POSITIVE = Float(gt=0)  # eps, ...
_RATE = Float(ge=0, lt=1)  # a decay rate (EMA of gradients or their squares)
_FLAG = Bool()
_COUNT = Int(ge=1)
_BETAS = ListOf(_RATE, 2)
_WD = Default(_NONNEGATIVE, 0.0)
_OFF = Default(_FLAG, False)
_ADAM = {"lr": Default(_LR, 1e-3), "betas": Default(_BETAS, (0.9, 0.999)), "eps": Default(_POSITIVE, 1e-8),
         "weight_decay": _WD}  # fmt: skip

# Paper's five: the defaults are the classes' own (the conf/optimizer files set the CIFAR protocol on top).
register_optimizer("sgd", OptimizerSpec(
    torch.optim.SGD,
    {"lr": Default(_LR, 1e-3), "momentum": Default(_NONNEGATIVE, 0.0), "weight_decay": _WD},
    "none", "SGD", "torch.optim.SGD",
    checks=(("momentum", lambda v: float(v) == 0.0, "0 (use 'sgdm' for momentum)"),),
))  # fmt: skip
register_optimizer("sgdm", OptimizerSpec(
    torch.optim.SGD,
    {"lr": Default(_LR, 1e-3), "momentum": Default(Float(gt=0, lt=1), 0.9),
     "dampening": Default(Float(ge=0, le=1), 0.0), "nesterov": _OFF, "weight_decay": _WD},
    "rule", "SGDM", "torch.optim.SGD; momentum 0.9 as in the CIFAR protocols",
))  # fmt: skip
register_optimizer("adam", OptimizerSpec(
    torch.optim.Adam, {**_ADAM, "amsgrad": _OFF, "decoupled_weight_decay": _OFF},
    "rule", "Adam", "Kingma & Ba 2015 (torch.optim.Adam's defaults)",
))  # fmt: skip
register_optimizer("adamw", OptimizerSpec(
    torch.optim.AdamW, {**_ADAM, "weight_decay": Default(_NONNEGATIVE, 1e-2), "amsgrad": _OFF},
    "rule", "AdamW", "Loshchilov & Hutter 2019 (torch.optim.AdamW's defaults)",
))  # fmt: skip
for _name, _cls, _label, _source in (
    ("adabelief", AdaBelief, "AdaBelief", "Zhuang et al. 2020, official adabelief-pytorch (eps 1e-16)"),
    ("adam3", AdaM3, "AdaM3", "Wang et al. 2021 (eps 1e-16 as AdaBelief's)"),
):
    register_optimizer(_name, OptimizerSpec(
        _cls, {**_ADAM, "eps": Default(_POSITIVE, 1e-16), "amsgrad": _OFF, "decoupled_weight_decay": _OFF},
        "rule", _label, _source,
    ))  # fmt: skip

# Optimizers people use now. Predicted by extrapolating the last update (no rule needed).
register_optimizer("nadam", OptimizerSpec(
    torch.optim.NAdam,
    # Dozat 2016 ("Incorporating Nesterov Momentum into Adam"): lr 0.002, beta2 0.999, eps 1e-8; the momentum
    # schedule mu_t = beta1 * (1 - 0.5 * 0.96 ** (t * 0.004)) with beta1 0.9 and momentum_decay 0.004 (Keras
    # Nadam's schedule_decay, which torch.optim.NAdam reproduces).
    {"lr": Default(_LR, 2e-3), "betas": Default(_BETAS, (0.9, 0.999)), "eps": Default(_POSITIVE, 1e-8),
     "weight_decay": _WD, "momentum_decay": Default(_NONNEGATIVE, 4e-3), "decoupled_weight_decay": _OFF},
    "extrapolate", "NAdam", "Dozat 2016; Keras Nadam (torch.optim.NAdam's defaults)",
))  # fmt: skip
register_optimizer("radam", OptimizerSpec(
    torch.optim.RAdam,
    # Liu et al. 2020 (ICLR), official code LiyuanLucasLiu/RAdam: RAdam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    # weight_decay=0); torch's RAdam takes the un-adapted (SGD-with-momentum) step while the variance is
    # intractable, as the official degenerated_to_sgd=True.
    {**_ADAM, "decoupled_weight_decay": _OFF},
    "extrapolate", "RAdam", "Liu et al. 2020, official RAdam code",
))  # fmt: skip
register_optimizer("adamax", OptimizerSpec(
    torch.optim.Adamax,
    # Kingma & Ba 2015, Algorithm 2 (AdaMax): alpha = 0.002, beta1 = 0.9, beta2 = 0.999 (eps: torch's 1e-8).
    {"lr": Default(_LR, 2e-3), "betas": Default(_BETAS, (0.9, 0.999)), "eps": Default(_POSITIVE, 1e-8),
     "weight_decay": _WD},
    "extrapolate", "Adamax", "Kingma & Ba 2015, Algorithm 2",
))  # fmt: skip
register_optimizer("rmsprop", OptimizerSpec(
    torch.optim.RMSprop,
    # Tieleman & Hinton 2012 (Coursera lecture 6.5): MeanSquare = 0.9 * MeanSquare + 0.1 * g**2, i.e. alpha 0.9;
    # lr 0.001 as in the lecture's suggestion and Keras/TensorFlow (torch's defaults are alpha 0.99, lr 0.01).
    {"lr": Default(_LR, 1e-3), "alpha": Default(_RATE, 0.9), "eps": Default(_POSITIVE, 1e-8), "weight_decay": _WD,
     "momentum": Default(_RATE, 0.0), "centered": _OFF},
    "extrapolate", "RMSprop", "Tieleman & Hinton 2012, lecture 6.5",
))  # fmt: skip
register_optimizer("adagrad", OptimizerSpec(
    torch.optim.Adagrad,
    # Duchi et al. 2011 give no numeric defaults; these are torch.optim.Adagrad's (lr 0.01, eps 1e-10, G_0 = 0).
    {"lr": Default(_LR, 1e-2), "lr_decay": Default(_NONNEGATIVE, 0.0), "weight_decay": _WD,
     "initial_accumulator_value": Default(_NONNEGATIVE, 0.0), "eps": Default(_POSITIVE, 1e-10)},
    "extrapolate", "Adagrad", "Duchi et al. 2011 (torch.optim.Adagrad's defaults)",
))  # fmt: skip
register_optimizer("adafactor", OptimizerSpec(
    torch.optim.Adafactor,
    # Shazeer & Stern 2018, Section 9/Algorithm 4: relative step rho_t = min(1e-2, 1/sqrt(t)) (lr caps it),
    # beta2_t = 1 - t**-0.8, clipping d = 1, eps2 = 1e-3; eps1 null = torch's dtype epsilon (torch applies eps1
    # differently from the paper's 1e-30, see torch.optim.Adafactor's note). Decay is decoupled (theta * lr * wd).
    {"lr": Default(_LR, 1e-2), "beta2_decay": Default(Float(le=0), -0.8), "d": Default(_POSITIVE, 1.0),
     "weight_decay": _WD, "eps": Default(ListOf(Nullable(Float(ge=0)), 2), (None, 1e-3))},
    "extrapolate", "Adafactor", "Shazeer & Stern 2018 (torch.optim.Adafactor)", decoupled_decay=True,
))  # fmt: skip
register_optimizer("muon", OptimizerSpec(
    MuonWithAdamW,
    # Keller Jordan's Muon (github.com/KellerJordan/Muon, README usage): Muon lr 0.02, momentum 0.95, nesterov,
    # 5 Newton-Schulz steps, weight decay 0.01 on the hidden matrices; the rest with AdamW lr 3e-4,
    # betas (0.9, 0.95), eps 1e-10 (muon.py's MuonWithAuxAdam defaults), weight decay 0.01.
    {"lr": Default(_LR, 0.02), "momentum": Default(_RATE, 0.95), "nesterov": Default(_FLAG, True),
     "ns_steps": Default(_COUNT, 5), "weight_decay": Default(_NONNEGATIVE, 0.01),
     "adjust_lr_fn": Default(Nullable(Choice("original", "match_rms_adamw", "spectral_unclamped")), None),
     "adamw_lr": Default(_LR, 3e-4), "adamw_betas": Default(_BETAS, (0.9, 0.95)),
     "adamw_eps": Default(_POSITIVE, 1e-10), "adamw_weight_decay": Default(_NONNEGATIVE, 0.01)},
    "extrapolate", "Muon", "Jordan et al. 2024, github.com/KellerJordan/Muon", param_groups=muon_param_groups,
))  # fmt: skip

# From pytorch-optimizer (pip install 'xgrad[extra-optim]'), never copied.
_EXTRA = "extra-optim"
register_optimizer("lion", OptimizerSpec(
    optional("pytorch_optimizer", "Lion", _EXTRA),
    # Chen et al. 2023 ("Symbolic Discovery of Optimization Algorithms"), official google/automl lion_pytorch.py:
    # Lion(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0); decoupled decay.
    {"lr": Default(_LR, 1e-4), "betas": Default(_BETAS, (0.9, 0.99)), "weight_decay": _WD},
    "extrapolate", "Lion", "Chen et al. 2023, official lion_pytorch.py", _EXTRA, decoupled_decay=True,
))  # fmt: skip
register_optimizer("soap", OptimizerSpec(
    optional("pytorch_optimizer", "SOAP", _EXTRA),
    # Vyas et al. 2024 ("SOAP: Improving and Stabilizing Shampoo using Adam"), official nikhilvyas/SOAP soap.py:
    # lr 3e-3, betas (0.95, 0.95), eps 1e-8, weight_decay 0.01, precondition_frequency 10,
    # max_precond_dim 10000, correct_bias true.
    {"lr": Default(_LR, 3e-3), "betas": Default(_BETAS, (0.95, 0.95)), "eps": Default(_POSITIVE, 1e-8),
     "weight_decay": Default(_NONNEGATIVE, 0.01), "precondition_frequency": Default(_COUNT, 10),
     "max_precondition_dim": Default(_COUNT, 10000), "correct_bias": Default(_FLAG, True)},
    "extrapolate", "SOAP", "Vyas et al. 2024, official SOAP code", _EXTRA,
))  # fmt: skip
register_optimizer("adan", OptimizerSpec(
    optional("pytorch_optimizer", "Adan", _EXTRA),
    # Xie et al. 2022 ("Adan: Adaptive Nesterov Momentum Algorithm"), official sail-sg/Adan adan.py:
    # lr 1e-3, betas (0.98, 0.92, 0.99), eps 1e-8, weight_decay 0.0, max_grad_norm 0.0 (no clipping).
    {"lr": Default(_LR, 1e-3), "betas": Default(ListOf(_RATE, 3), (0.98, 0.92, 0.99)),
     "eps": Default(_POSITIVE, 1e-8), "weight_decay": _WD, "max_grad_norm": Default(_NONNEGATIVE, 0.0)},
    "extrapolate", "Adan", "Xie et al. 2022, official Adan code", _EXTRA,
))  # fmt: skip


# ----------------------------------------------------------------------------------------------- building


def _validate(name: str, spec: OptimizerSpec, hp: dict[str, Any]) -> None:
    check_values("", hp, spec.params, f"optimizer {name!r}")
    for key, check, text in spec.checks:
        if key in hp and not check(hp[key]):
            raise ValueError(f"invalid {key}={hp[key]!r} for {name!r}: accepted {text}")


def _takes_foreach(build: Callable[..., Optimizer]) -> bool:
    try:
        return "foreach" in inspect.signature(build).parameters
    except (TypeError, ValueError):
        return False


def create_optimizer(
    name: str,
    params: nn.Module | Iterable[Tensor] | Iterable[dict],
    *,
    foreach: bool | None = None,
    **hyperparameters: Any,
) -> Optimizer:
    """Build the optimizer registered as ``name`` (see ``OPTIMIZERS``).

    ``params`` is the model (then an entry with ``param_groups`` splits it, e.g. Muon's hidden matrices from
    the rest) or its parameters / parameter groups. Hyperparameters override the entry's defaults and are
    validated first: a bad value raises ``ValueError`` naming it and what is accepted; an unknown name lists
    the known ones; a missing optional package raises :class:`MissingExtraError` naming the extra. Tuples may
    be lists (as configuration files give them). ``foreach`` (multi-tensor kernels) is passed to classes that
    take it and ignored by the others.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: known optimizers are {', '.join(OPTIMIZERS)}")
    spec = OPTIMIZERS[name]
    _validate(name, spec, hyperparameters)
    hp = {**spec.defaults, **hyperparameters}
    hp = {k: tuple(v) if isinstance(v, list) else v for k, v in hp.items()}
    if isinstance(params, nn.Module):
        params = spec.param_groups(params) if spec.param_groups else params.parameters()
    if foreach is not None and _takes_foreach(spec.build):
        hp["foreach"] = foreach
    optimizer = spec.build(params, **hp)
    if spec.decoupled_decay:
        for group in optimizer.param_groups:
            group.setdefault("decoupled_weight_decay", True)
    return optimizer
