"""Optimizers: AdaBelief, AdaM3, Muon with AdamW, and the one registry that builds any supported optimizer by name."""

from .adabelief import AdaBelief
from .adam3 import AdaM3
from .factory import (
    OPTIMIZERS,
    MissingExtraError,
    OptimizerSpec,
    create_optimizer,
    optional,
    register_optimizer,
)
from .muon import MuonWithAdamW, muon_param_groups

__all__ = [
    "OPTIMIZERS",
    "AdaBelief",
    "AdaM3",
    "MissingExtraError",
    "MuonWithAdamW",
    "OptimizerSpec",
    "create_optimizer",
    "muon_param_groups",
    "optional",
    "register_optimizer",
]
