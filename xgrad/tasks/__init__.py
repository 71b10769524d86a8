"""Tasks: what a run trains and how it is measured. The training loop (xgrad.trainer) is shared by all.

A task builds its data and model from the config and turns batches into a loss plus summed statistics; the
loop owns optimisation, prediction, scheduling, checkpoints and files. Adding a task is a new module with a
:func:`register_task` class and a dataset config whose ``task:`` names it.
"""

from __future__ import annotations

import contextlib
import os
import resource
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from xgrad.errors import ConfigError

__all__ = ["PRECISIONS", "TASKS", "Runtime", "Stats", "Task", "build_model", "config_kwargs", "create_task",
           "register_task", "resolve_device", "task_class"]  # fmt: skip

Stats = dict[str, Tensor | int]
"""Summed statistics of some batches, e.g. ``{"loss_sum": ..., "count": ..., "correct": ...}``.

Values computed on the device stay tensors there (reading them is a host sync); counts known on the host
(``count``) stay Python ints.
"""


#: ``precision`` values and the autocast dtype each runs forward passes in (None: no autocast, float32 throughout).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Training steps between host synchronisations in the step loop on CUDA (divergence check, progress-bar loss).
CUDA_SYNC_EVERY = 25


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a :class:`ConfigError`."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("invalid device='cuda': no CUDA device is available (use device=cpu or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass(frozen=True)
class Runtime:
    """Where and how the run computes: device, precision, memory format, determinism, data-parallel rank.

    The one owner of these choices: the loop and the tasks ask it, nothing else reads the config keys. Build it
    with :meth:`from_config` (which resolves ``auto``) and call :meth:`apply` once, before any model is built.

    ``precision`` is the resolved value (``fp32``, ``bf16`` or ``fp16``): forward passes run under autocast
    with that dtype, except recurrent layers, which always compute in float32 (see
    :class:`xgrad.models.lstm.FP32LSTM`). ``fp16`` also scales the loss (:meth:`grad_scaler`).
    """

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    deterministic: bool = False
    rank: int = 0
    world_size: int = 1
    #: Training steps between the loop's host synchronisations: 1 on CPU, where they cost nothing; on CUDA a
    #: sync stalls the CPU-GPU pipeline, so statistics stay on the device and are read only every N steps.
    sync_every: int = 1

    @classmethod
    def from_config(cls, cfg: DictConfig, device: torch.device, rank: int = 0, world_size: int = 1) -> Runtime:
        """Resolve ``precision``, ``channels_last`` and ``deterministic`` for ``cfg``'s task on ``device``.

        ``precision=auto`` is the task's :attr:`Task.cuda_precision` on CUDA (bf16 for image models; fp32 for the
        recurrent language models, whose published numbers are fp32) and fp32 on CPU. ``channels_last=auto`` is
        on for convolutional tasks on CUDA.
        """
        task = task_class(cfg.dataset.task)
        cuda = device.type == "cuda"
        precision = str(cfg.get("precision", "auto"))  # configurations written before these keys lack them
        if precision == "auto":
            precision = task.cuda_precision if cuda else "fp32"
            if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
                precision = "fp32"  # pre-Ampere GPUs: no fast bf16, and fp16 would need a loss scale
        elif precision == "bf16" and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise ConfigError(f"invalid precision='bf16': {torch.cuda.get_device_name(device)} has no native "
                              "bfloat16 (use precision=fp16 or fp32)")  # fmt: skip
        channels_last = cfg.get("channels_last", "auto")  # true with a language model: refused by the schema
        if channels_last == "auto":
            channels_last = cuda and task.convolutional
        return cls(device, precision, bool(channels_last), bool(cfg.get("deterministic", False)), rank, world_size,
                   sync_every=CUDA_SYNC_EVERY if cuda else 1)  # fmt: skip

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype of forward passes (None: float32, no autocast)."""
        return PRECISIONS[self.precision]

    def apply(self) -> None:
        """Set torch's process-wide switches for this run and start counting its peak memory.

        ``deterministic``: deterministic algorithms only (an operation without one raises), no cuDNN autotuning
        and no TF32, so a resumed CUDA run repeats the uninterrupted one bit for bit. Otherwise, on CUDA, cuDNN
        picks the fastest kernels per run (``benchmark``) and float32 matmuls and convolutions use TF32.
        """
        cuda = self.device.type == "cuda"
        if self.deterministic and cuda:
            # cuBLAS needs a fixed workspace to be deterministic (PyTorch's reproducibility notes); it is read
            # when cuBLAS starts, so a user's own setting wins.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(self.deterministic)
        torch.backends.cudnn.deterministic = self.deterministic
        torch.backends.cudnn.benchmark = cuda and not self.deterministic
        tf32 = cuda and not self.deterministic
        torch.backends.cuda.matmul.allow_tf32 = tf32  # the legacy switches: torch.compile reads them
        torch.backends.cudnn.allow_tf32 = tf32
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)  # several runs may share one process (multirun)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (a no-op at fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """The loss scaler: active at fp16 (whose gradients underflow unscaled), a pass-through otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` on the device, in channels_last memory format when that is on."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def synchronize(self) -> None:
        """Wait for the device's queued work (before reading a clock); nothing to wait for on CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_memory_bytes(self) -> int:
        """Peak memory of this run so far.

        CUDA: the peak of tensors allocated on the device since :meth:`apply`. CPU: the process's peak resident
        memory (``ru_maxrss``), which includes everything the process did before, e.g. earlier runs of a
        multirun in the same process.
        """
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """The resolved settings for ``summary.json``: ``precision``, ``channels_last``, ``deterministic``, and
        ``rnn_precision``, the dtype ``model``'s recurrent layers compute in (null without any)."""
        from xgrad.models.lstm import FP32LSTM

        rnns = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
        rnn_precision = None
        if rnns:  # FP32LSTM stays out of autocast; a plain RNN follows it (to half on CUDA, see FP32LSTM)
            plain = self.amp_dtype is not None and not all(isinstance(m, FP32LSTM) for m in rnns)
            rnn_precision = ("fp16" if self.device.type == "cuda" else self.precision) if plain else "fp32"
        return {"precision": self.precision, "channels_last": self.channels_last,
                "deterministic": self.deterministic, "rnn_precision": rnn_precision}  # fmt: skip


class Task(ABC):
    """One kind of experiment. Subclasses set the class attributes and build ``self.model`` in ``__init__``."""

    #: The quality metric reported beside the loss: ``"acc"`` (accuracy fraction) or ``"ppl"`` (perplexity).
    metric: str
    higher_is_better: bool
    #: Name of the throughput column in metrics.csv.
    throughput: str = "samples_per_second"

    #: What ``precision=auto`` means on CUDA (on CPU it is fp32).
    cuda_precision: str = "bf16"
    #: Whether the models are convolutional (``channels_last=auto`` turns the memory format on for them on CUDA).
    convolutional: bool = False

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


def task_class(name: str) -> type[Task]:
    """The task registered as ``name`` (``dataset.task``)."""
    from . import classification, language  # noqa: F401  (register themselves)

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (dataset.task): known tasks are {sorted(TASKS)}")
    return TASKS[name]


def create_task(cfg: DictConfig, runtime: Runtime) -> Task:
    """Build the task named by ``cfg.dataset.task``."""
    return task_class(cfg.dataset.task)(cfg, runtime)
