"""Optimizers: AdaBelief and AdaM3, and a registry that builds any supported optimizer by name."""

from .adabelief import AdaBelief
from .adam3 import AdaM3
from .factory import OPTIMIZERS, OptimizerSpec, create_optimizer, register_optimizer

__all__ = ["OPTIMIZERS", "AdaBelief", "AdaM3", "OptimizerSpec", "create_optimizer", "register_optimizer"]
