"""Tasks: what a run trains and how it is measured. The training loop (xgrad.trainer) is shared by all.

A task builds its data and model from the config and turns batches into a loss plus summed statistics; the
loop owns optimisation, prediction, scheduling, checkpoints and files. Adding a task is a new module with a
:func:`register_task` class and a dataset config whose ``task:`` names it.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

__all__ = ["TASKS", "Runtime", "Stats", "Task", "build_model", "config_kwargs", "create_task", "register_task"]

Stats = dict[str, Tensor]
"""Summed statistics of some batches, e.g. ``{"loss_sum": ..., "count": ..., "correct": ...}``."""


@dataclass(frozen=True)
class Runtime:
    """Where and how the run computes: device, mixed precision, memory format, data-parallel rank."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (a no-op without ``amp_dtype``)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


class Task(ABC):
    """One kind of experiment. Subclasses set the class attributes and build ``self.model`` in ``__init__``."""

    #: The quality metric reported beside the loss: ``"acc"`` (accuracy fraction) or ``"ppl"`` (perplexity).
    metric: str
    higher_is_better: bool
    #: Name of the throughput column in metrics.csv.
    throughput: str = "samples_per_second"

    model: nn.Module
    synthetic: bool = False

    def __init__(self, cfg: DictConfig, runtime: Runtime) -> None:
        self.cfg, self.runtime = cfg, runtime

    @property
    def local_batch_size(self) -> int:
        """This process's share of the global ``batch_size`` (all of it without data parallelism)."""
        return int(self.cfg.batch_size) // self.runtime.world_size

    @property
    @abstractmethod
    def eval_splits(self) -> list[str]:
        """Splits evaluated after every epoch, model-selection split first (e.g. ``["val", "test"]``)."""

    @abstractmethod
    def num_batches(self) -> int:
        """Training micro-batches per epoch."""

    @abstractmethod
    def train_batches(self, epoch: int) -> Iterator[Any]:
        """The micro-batches of training epoch ``epoch`` (0-based), reproducible from the seed and epoch."""

    @abstractmethod
    def train_loss(self, batch: Any) -> tuple[Tensor, Stats]:
        """Forward one training micro-batch: the mean loss to backpropagate and its summed statistics."""

    @abstractmethod
    def evaluate(self, split: str) -> Stats:
        """Summed statistics of ``split`` at the current weights (the loop sets eval mode and no_grad)."""

    @abstractmethod
    def metrics(self, prefix: str, stats: Stats) -> dict[str, float]:
        """Turn summed statistics into ``{prefix_loss, prefix_<metric>}``."""

    def state_dict(self) -> dict[str, Any]:
        """Task state a checkpoint must carry besides the model (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what :meth:`state_dict` saved."""


def config_kwargs(node: DictConfig) -> dict[str, Any]:
    """A config group entry as keyword arguments: every key but ``name``; null means "the callee's default"."""
    values = OmegaConf.to_container(node, resolve=True)
    return {k: v for k, v in values.items() if k != "name" and v is not None}


def build_model(cfg: DictConfig, num_classes: int) -> nn.Module:
    """The model ``cfg.model.name`` with the config's hyperparameters (checked by the config schema, which also
    made sure it serves the dataset's task)."""
    from xgrad.models import create_model

    return create_model(cfg.model.name, num_classes=num_classes, **config_kwargs(cfg.model))


TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make ``dataset.task: <name>`` build this task."""

    def decorate(cls: type[Task]) -> type[Task]:
        TASKS[name] = cls
        return cls

    return decorate


def create_task(cfg: DictConfig, runtime: Runtime) -> Task:
    """Build the task named by ``cfg.dataset.task``."""
    from . import classification, language  # noqa: F401  (register themselves)

    name = cfg.dataset.task
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (dataset.task): known tasks are {sorted(TASKS)}")
    return TASKS[name](cfg, runtime)
