"""The training loop shared by every task: one configuration in, a complete run folder out.

Per epoch: train (with weight prediction around forward and backward when ``predict=true``), evaluate at the
current weights, append a row to ``metrics.csv``, save the checkpoint and refresh ``summary.json``. A re-run of
the same command resumes from the checkpoint and ends with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from xgrad import WeightPredictor
from xgrad.distributed import DistributedContext, all_reduce_sum, barrier, setup_distributed
from xgrad.errors import ConfigError, ConfigMismatch, DiskFull, ResumeError, error_text
from xgrad.identity import config_id, differences, identity, pair_id
from xgrad.optim import MissingExtraError, create_optimizer
from xgrad.prediction_error import PredictionErrorMeter
from xgrad.rundir import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    SCHEMA_VERSION,
    hold,
    read_config,
    read_summary,
    remove_stale_temporaries,
    save_checkpoint,
    write_config,
    write_metrics,
    write_summary,
)
from xgrad.schedulers import create_scheduler
from xgrad.schema import validate
from xgrad.tasks import Runtime, Stats, Task, config_kwargs, create_task, resolve_device
from xgrad.tracking import Trackers

__all__ = ["ConfigError", "RunResult", "train"]

log = logging.getLogger("xgrad")


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class RunResult:
    """What :func:`train` did: the final status and summary."""

    status: str
    summary: dict[str, Any]
    skipped: bool = False


# ----------------------------------------------------------------------------------- configuration


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@functools.cache
def git_commit() -> str | None:
    """The commit of the xgrad checkout, if it is one: read once per process, since the code that runs is the code
    imported (a checkout moved on mid-run does not change it), and every summary write asked git again."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------------- state


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Progress:
    """Everything about the run so far that is not in the model, optimizer or scheduler."""

    epoch: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    wall_seconds: float = 0.0
    train_seconds: float = 0.0
    # The code that trained the run, oldest first: a run resumed under another commit lists both.
    git_commits: list[str | None] = field(default_factory=list)


# ----------------------------------------------------------------------------------- the loop


class Trainer:
    """Owns one run: builds task, optimizer, predictor and schedule from ``cfg`` (checked: :func:`train` validates
    it first); trains; writes ``folder``."""

    saved_epochs: int = 0  # the epochs checkpoint.pt and metrics.csv both hold: all a summary may claim

    def __init__(self, cfg: DictConfig, folder: Path, overrides: str = "") -> None:
        self.cfg, self.folder, self.overrides = cfg, folder, overrides
        self.started = time.perf_counter()
        device = resolve_device(cfg.device)
        cuda = device.type == "cuda"
        self.dist: DistributedContext = setup_distributed(device.type)
        if self.dist.enabled:
            if cfg.batch_size % self.dist.world_size:
                raise ConfigError(
                    f"invalid batch_size={cfg.batch_size}: with {self.dist.world_size} processes it must be a "
                    "multiple of the world size (batch_size is the global batch)"
                )
            if cuda:
                device = torch.device("cuda", self.dist.local_rank)
        self.runtime = Runtime.from_config(cfg, device, self.dist.rank, self.dist.world_size)
        self.runtime.apply()
        seed_everything(cfg.seed)
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        self.task: Task = create_task(cfg, self.runtime)
        self.model: nn.Module = self.task.model  # the plain module: optimizer, checkpoints, prediction
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if self.dist.enabled:
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=[device.index] if cuda else None)
            self.task.model = self.ddp
        if cfg.compile:
            # Compile the DDP-wrapped model, PyTorch's documented order: its DDPOptimizer splits the graph at
            # DDP's bucket boundaries, so gradient all-reduces still overlap the backward pass.
            self.task.model = torch.compile(self.task.model)
        # null entries mean "the optimizer's default" (e.g. eps for SGD in the PTB presets' eps tables)
        hp = config_kwargs(cfg.optimizer)
        try:
            self.optimizer = create_optimizer(cfg.optimizer.name, self.model, foreach=True, **hp)
        # A missing optional package (the environment), or a constraint across keys that only the optimizer's
        # constructor checks (torch's SGD: nesterov needs dampening=0): still one line, not a traceback.
        except (MissingExtraError, ValueError) as e:
            raise ConfigError(f"optimizer={cfg.optimizer.name}: {e}") from e
        self.scaler = self.runtime.grad_scaler()
        self.predictor = None
        if cfg.predict and cfg.predict_steps > 0:
            self.predictor = WeightPredictor(
                self.optimizer,
                cfg.predict_steps,
                cfg.predict_weight_decay,
                compile=bool(cfg.compile),
                method=cfg.get("predict_method", "auto"),
            )
        every = cfg.get("prediction_error_every", 0)
        self.error_meter = None  # measures the prediction against the weights reached (xgrad.prediction_error)
        if self.predictor and every:
            self.error_meter = PredictionErrorMeter(self.model.parameters(), cfg.predict_steps, every)
        steps_per_epoch = math.ceil(self.task.num_batches() / cfg.grad_accum)
        self.scheduler, self.interval = create_scheduler(self.optimizer, cfg.scheduler, cfg.epochs, steps_per_epoch)
        self.progress = Progress()

    # -------------------------------------------------------------------- checkpoints

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "predictor": self.predictor.state_dict() if self.predictor else None,
            "scaler": self.scaler.state_dict(),
            "task": self.task.state_dict(),
            "rng": _rng_state(),
            "progress": self.progress.__dict__,
        }

    def load_checkpoint(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location=self.runtime.device, weights_only=False)
        except Exception as e:
            raise ResumeError(f"cannot read checkpoint {path}: {e} (delete it, or set resume=false)") from e
        recorded, current = state.get("identity") if isinstance(state, dict) else None, identity(self.cfg)
        # Re-derived: a checkpoint keeps the identity of the version that wrote it (one with the presets' tables).
        recorded = identity(recorded) if isinstance(recorded, dict) else recorded
        if recorded is not None and recorded != current:
            shown = ", ".join(k for k, _, _ in differences(recorded, current)[:4])
            raise ResumeError(f"checkpoint {path} is of another configuration (differs in {shown}); delete it, "
                              "or set resume=false to start over")  # fmt: skip
        self._check_runtime(path, state.get("runtime") if isinstance(state, dict) else None)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.predictor and state["predictor"]:
                self.predictor.load_state_dict(state["predictor"])
            if state.get("scaler"):  # empty when saved without loss scaling
                self.scaler.load_state_dict(state["scaler"])
            self.task.load_state_dict(state["task"])
            _set_rng_state(state["rng"])
            self.progress = Progress(**state["progress"])
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
            why = " ".join(str(e).split())[:160]
            raise ResumeError(
                f"checkpoint {path} does not fit this configuration (another model or optimizer? "
                f"{type(e).__name__}: {why}); delete it, or set resume=false to start over"
            ) from None

    def _check_runtime(self, path: Path, recorded: dict[str, Any] | None) -> None:
        """Refuse to resume under other resolved settings: ``precision=auto`` and ``channels_last=auto`` resolve
        by device, which is not part of a run's identity, so a CPU run resumed on a GPU would go on in bf16."""
        current = self._runtime_record()
        changed = [f"{k}={recorded[k]} -> {v}" for k, v in current.items() if recorded and recorded.get(k, v) != v]
        if changed:
            raise ResumeError(
                f"checkpoint {path} was trained with other resolved settings ({', '.join(changed)}; another device?): "
                "resume it on its own kind of device, or set resume=false to start over"
            )

    def _runtime_record(self) -> dict[str, Any]:
        """The resolved settings that change results, as checkpoints record them."""
        r = self.runtime
        return {"precision": r.precision, "channels_last": r.channels_last, "deterministic": r.deterministic}

    # -------------------------------------------------------------------- one epoch

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], int]:
        """Train one epoch; return its metrics and the number of samples (or tokens) seen."""
        cfg, task = self.cfg, self.task
        self.model.train()
        totals: Stats = {}
        bar = self._progress_bar(epoch)
        batches = task.train_batches(epoch)
        predictor = self.predictor or contextlib.nullcontext()
        meter, steps = self.error_meter, math.ceil(task.num_batches() / cfg.grad_accum)
        if meter:
            meter.start_epoch(epoch, steps)
        for step in range(steps):
            micro = [b for _, b in zip(range(cfg.grad_accum), batches)]
            self.optimizer.zero_grad(set_to_none=True)
            # forward and backward of every micro-batch see the predicted weights
            with meter.around(predictor, step) if meter else predictor:
                for i, batch in enumerate(micro):
                    loss, stats = task.train_loss(batch)
                    with self._gradient_sync(last=i == len(micro) - 1):
                        self.scaler.scale(loss / len(micro)).backward()
                    for k, v in stats.items():  # summed on the device: no host sync
                        totals[k] = totals[k] + v if k in totals else v
            self._optimizer_step()
            if self.interval == "step":
                self.scheduler.step()
            if step % self.runtime.sync_every == 0:  # the loop's only host syncs, sampled
                self._sample(epoch, step, totals, loss, bar)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        totals = all_reduce_sum(totals, self.dist, self.runtime.device)
        if not torch.isfinite(totals["loss_sum"]):
            raise Diverged(f"non-finite training loss in epoch {epoch + 1}")
        metrics = task.metrics("train", totals)
        if meter:
            metrics.update(meter.end_epoch())
        return metrics, int(totals["count"])

    def _optimizer_step(self) -> None:
        """Clip (the true gradients: unscaled first) and step; at fp16 a step with inf/NaN gradients is skipped."""
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)  # at fp16 reads whether gradients overflowed: a host sync per step
        self.scaler.update()

    def _sample(self, epoch: int, step: int, totals: Stats, loss: torch.Tensor, bar) -> None:
        """Check the running loss sum (a non-finite step keeps it non-finite) and show the loss on the bar."""
        # With data parallelism, ranks could disagree mid-epoch; the reduced epoch totals are checked instead.
        if not self.dist.enabled and not torch.isfinite(totals["loss_sum"]):
            raise Diverged(f"non-finite training loss at epoch {epoch + 1}, step {step + 1}")
        if bar is not None:
            bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{self._lr():.3g}", refresh=False)

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        # With accumulation, DDP only needs to average gradients after the last micro-batch.
        if self.ddp is not None and not last:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        metrics: dict[str, float] = {}
        for split in self.task.eval_splits:
            metrics.update(self.task.metrics(split, self.task.evaluate(split)))
        return metrics

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _progress_bar(self, epoch: int):
        mode = self.cfg.progress
        if not self.dist.is_main or mode == "line" or (mode == "auto" and not sys.stderr.isatty()):
            return None
        from tqdm.auto import tqdm

        steps = math.ceil(self.task.num_batches() / self.cfg.grad_accum)
        return tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False, dynamic_ncols=True)

    # -------------------------------------------------------------------- the run

    def run(self, trackers: Trackers) -> str:
        """Train the remaining epochs; return the final status (``completed`` or ``diverged``)."""
        cfg, progress = self.cfg, self.progress
        selection = self.task.eval_splits[0]
        key = f"{selection}_{self.task.metric}"
        while progress.epoch < cfg.epochs:
            epoch = progress.epoch
            lr = self._lr()
            self.runtime.synchronize()  # clocks are read with the device idle: the time of this epoch's work
            start = time.perf_counter()
            try:
                train_metrics, seen = self.train_epoch(epoch)
            except Diverged as e:
                log.warning("%s: stopping, run marked diverged", e)
                return "diverged"
            self.runtime.synchronize()
            train_time = time.perf_counter() - start
            eval_metrics = self.evaluate()
            if self.interval == "epoch":
                self.scheduler.step()
            self.runtime.synchronize()
            epoch_time = time.perf_counter() - start
            row = {"epoch": epoch + 1, "lr": lr, **train_metrics, **eval_metrics,
                   "epoch_seconds": epoch_time, self.task.throughput: seen / train_time}  # fmt: skip
            progress.rows.append(row)
            progress.epoch += 1
            progress.train_seconds += train_time
            if not math.isfinite(row[key]) or not math.isfinite(row["train_loss"]):
                log.warning("non-finite %s at epoch %d: run marked diverged", key, epoch + 1)
                self._save("diverged")
                return "diverged"
            best = progress.best_epoch
            if best is None or self._better(row[key], progress.rows[best - 1][key]):
                progress.best_epoch = epoch + 1
            self._save("running")
            trackers.log_epoch(row)
            if not self.dist.is_main:
                continue
            log.info(
                "epoch %d/%d  lr %.4g  %s  %.1fs",
                epoch + 1, cfg.epochs, lr,
                "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("train_", "val_", "test_"))),
                epoch_time,
            )  # fmt: skip
        return "completed"

    def _better(self, new: float, old: float) -> bool:
        return new > old if self.task.higher_is_better else new < old

    def _save(self, status: str) -> None:
        self.progress.wall_seconds += time.perf_counter() - self.started
        self.started = time.perf_counter()
        # In this order, so that a summary never claims more epochs than checkpoint and metrics hold.
        if self.dist.is_main:
            state = {**self.checkpoint_state(), "identity": identity(self.cfg), "runtime": self._runtime_record()}
            save_checkpoint(self.folder, state)
            write_metrics(self.folder, self.progress.rows)
        self.saved_epochs = self.progress.epoch
        if self.dist.is_main:
            write_summary(self.folder, self.summary(status))
        barrier(self.dist)

    def _best_epoch(self, rows: list[dict[str, Any]]) -> int | None:
        """The best of ``rows`` (1-based): ``progress.best_epoch`` unless that epoch is not among them."""
        best = self.progress.best_epoch
        if best is None or best <= len(rows):
            return best
        key = f"{self.task.eval_splits[0]}_{self.task.metric}"
        best = None
        for i, row in enumerate(rows, start=1):
            if math.isfinite(row[key]) and (best is None or self._better(row[key], rows[best - 1][key])):
                best = i
        return best

    def summary(self, status: str, error: str | None = None) -> dict[str, Any]:
        cfg, progress = self.cfg, self.progress
        summary = base_summary(cfg, self.overrides, status, synthetic=self.task.synthetic)
        rows = progress.rows[: self.saved_epochs]  # an epoch whose files failed to write is not claimed
        summary["epochs_done"] = len(rows)
        if rows:
            last = rows[-1]
            summary.update({f"final_{k}": v for k, v in last.items() if k.startswith(("train_", "val_", "test_"))})
        best_epoch = self._best_epoch(rows)
        if best_epoch is not None:
            best = rows[best_epoch - 1]
            summary.update({f"best_{k}": v for k, v in best.items() if k.startswith(("val_", "test_"))})
        summary["best_epoch"] = best_epoch
        summary["git_commits"] = progress.git_commits  # git_commit (base_summary) is this start's
        summary["predict_method"] = self.predictor.method if self.predictor else None  # "auto" resolved
        summary["best_selected_on"] = self.task.eval_splits[0]
        summary.update(
            wall_seconds=progress.wall_seconds + (time.perf_counter() - self.started),
            train_seconds=progress.train_seconds,
            peak_memory_bytes=self.runtime.peak_memory_bytes(),
            visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),  # the GPU(s) a launcher gave this job
            device=str(self.runtime.device) + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available()
                                               and self.runtime.device.type == "cuda" else ""),
        )  # fmt: skip
        summary.update(self.runtime.describe(self.model))
        if error is not None:
            summary["error"] = error
        return summary


def base_summary(cfg: DictConfig, overrides: str, status: str, synthetic: bool | None = None) -> dict[str, Any]:
    """The identifying part of ``summary.json``: what was run, where, with which code."""
    ident = identity(cfg)
    return {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "task": cfg.dataset.task,
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "optimizer": cfg.optimizer.name,
        # predict_steps=0 is prediction off: such runs are the baseline, whatever `predict` says.
        "predict": bool(cfg.predict and cfg.predict_steps > 0),
        "predict_steps": float(cfg.predict_steps) if cfg.predict and cfg.predict_steps > 0 else 0.0,
        "seed": int(cfg.seed),
        "overrides": overrides,
        # The report groups seeds by config_id and pairs a run with its baseline by pair_id (xgrad.identity).
        "config_id": config_id(ident),
        "pair_id": pair_id(ident),
        "synthetic": bool(synthetic) if synthetic is not None else cfg.dataset.name.startswith("demo_"),
        "reduced_scale": bool(cfg.reduced_scale),
        "epochs": int(cfg.epochs),
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
    }


def _previous_summary(folder: Path) -> dict[str, Any] | None:
    """The summary a run folder holds; a :class:`ResumeError` when it is not one xgrad could have written."""
    try:
        return read_summary(folder)
    except ValueError as e:
        raise ResumeError(f"{e}; delete it, or set resume=false to start the run over") from None


def _check_identity(folder: Path, cfg: DictConfig) -> bool:
    """Refuse a folder holding a run of another configuration; return whether ``config.yaml`` is to be written.

    The configuration a run started with is its ``config.yaml``; a run goes on in its folder only with the same
    identity (:func:`xgrad.identity.identity`). With ``resume=false`` the folder's run is started over.
    """
    if not cfg.resume:
        return True
    try:
        recorded = read_config(folder)
    except ValueError as e:
        raise ResumeError(f"{e}; delete it, or set resume=false to start the run over") from None
    if recorded is None:  # a new folder (or one of a version of xgrad that did not record it): adopted
        return True
    diffs = differences(identity(recorded), identity(cfg))
    if diffs:
        shown = "; ".join(f"{k}: {_show(a)} there, {_show(b)} now" for k, a, b in diffs[:4])
        more = f"; and {len(diffs) - 4} more" if len(diffs) > 4 else ""
        raise ConfigMismatch(
            f"{folder} holds a run of another configuration ({shown}{more}, see its {CONFIG}): set resume=false "
            "to start it over in place, or run into another folder"
        )
    return False


def _show(value: Any) -> str:
    return "absent" if value is ... else repr(value)


def train(cfg: DictConfig, folder: Path, overrides: str = "") -> RunResult:
    """Train ``cfg`` into ``folder``: resume if a checkpoint exists, skip if already finished.

    Raises :class:`ConfigError` (nothing written) for a bad configuration, :class:`ConfigMismatch` (nothing
    written) when ``folder`` holds a run of another configuration, :class:`FolderInUse` when another process
    runs there; any other exception marks the run ``failed`` in ``summary.json`` with the error and is re-raised.
    """
    folder = Path(folder)
    validate(cfg)  # before the folder is made or locked: a bad configuration writes nothing
    # One process per run folder; under torchrun rank 0 holds it for all ranks.
    with hold(folder) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext():
        return _train(cfg, folder, overrides)


def _commits_so_far(progress: Progress, previous: dict[str, Any] | None) -> list[str | None]:
    """The commits that trained the run, this start's last (listed once however often it resumed under it)."""
    commits = list(progress.git_commits)
    if not commits and progress.epoch:  # a checkpoint from before they were kept: its summary knows (None: unknown)
        # (a start killed before its first checkpoint already wrote its own commit there, after the list)
        recorded = (previous or {}).get("git_commits")
        commits = list(recorded) if isinstance(recorded, list) and recorded else [(previous or {}).get("git_commit")]
    now = git_commit()
    return commits if commits and commits[-1] == now else [*commits, now]


def _train(cfg: DictConfig, folder: Path, overrides: str) -> RunResult:
    for path in remove_stale_temporaries(folder):
        log.info("removed %s, left by a write that was killed", path.name)
    new_record = _check_identity(folder, cfg)
    previous = _previous_summary(folder) if cfg.resume else None
    if previous and previous.get("status") in ("completed", "diverged"):
        log.info("already %s: %s (nothing to do; set resume=false to run it again)", previous["status"], folder)
        return RunResult(previous["status"], previous, skipped=True)
    trainer = Trainer(cfg, folder, overrides)
    checkpoint = folder / CHECKPOINT
    if cfg.resume and checkpoint.exists():
        trainer.load_checkpoint(checkpoint)
        trainer.saved_epochs = trainer.progress.epoch
        log.info("resuming %s after epoch %d", folder, trainer.progress.epoch)
    elif not cfg.resume:  # start over: nothing of the earlier run stays beside the new one
        for name in (CHECKPOINT, METRICS):
            (folder / name).unlink(missing_ok=True)
    trainer.progress.git_commits = _commits_so_far(trainer.progress, previous)
    main = trainer.dist.is_main
    if main and new_record:
        write_config(folder, OmegaConf.to_container(cfg, resolve=True))
    trackers = Trackers(cfg, folder, overrides, enabled=main)
    try:
        if main:
            write_summary(folder, trainer.summary("running"))
        status = trainer.run(trackers)
        summary = trainer.summary(status)
        if main:
            write_summary(folder, summary)
            trackers.finish(summary)
            log.info("%s: %s", status, folder)
        return RunResult(status, summary)
    except BaseException as e:
        error = error_text(e)
        summary = trainer.summary("failed" if not isinstance(e, KeyboardInterrupt) else "interrupted", error)
        if main:
            try:
                write_summary(folder, summary)
            except (OSError, DiskFull) as write_error:  # e.g. the disk is still full: the first error is the one
                log.warning("summary.json not updated: %s", write_error)
            trackers.finish(summary)
        raise
    finally:
        trackers.close()
        trainer.dist.close()
