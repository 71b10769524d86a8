"""Optional experiment trackers (W&B, TensorBoard) beside the run folder's own files.

A tracker that fails to start or to log (no key, package missing) is reported once as a warning and dropped:
the run goes on, and metrics.csv / summary.json are always written regardless. W&B online that cannot reach its
server within ``WANDB_INIT_TIMEOUT`` seconds (10 unless the environment says otherwise) logs offline instead,
with one warning.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["Trackers", "wandb_names"]

log = logging.getLogger("xgrad")

WANDB_INIT_TIMEOUT = 10.0  # seconds W&B online may take to start a run before this one logs offline instead


def wandb_names(cfg: DictConfig, overrides: str) -> dict[str, Any]:
    """Project, group, name and tags for W&B: the seeds of one configuration share a group."""
    config_key = overrides or "default"
    experiment = f"{cfg.dataset.name}-{cfg.model.name}"
    prediction = f"predict{cfg.predict_steps:g}" if cfg.predict and cfg.predict_steps > 0 else "no-predict"
    return {
        "group": f"{experiment}/{cfg.optimizer.name}/{prediction}/{config_key}",
        "name": f"{cfg.optimizer.name}-{prediction}-seed{cfg.seed}",
        "tags": [cfg.dataset.name, cfg.model.name, cfg.optimizer.name, prediction]
        + (["synthetic"] if cfg.dataset.name.startswith("demo_") else [])
        + (["reduced-scale"] if cfg.reduced_scale else []),
    }


class Trackers:
    """The trackers chosen with ``logger=...``; every method is safe to call when none is."""

    def __init__(self, cfg: DictConfig, folder: Path, overrides: str = "", enabled: bool = True) -> None:
        self.cfg, self.folder = cfg, folder
        self._exit_code = 1  # until finish() says how the run ended
        chosen = ((cfg.get("logger") or {}).get("trackers") or {}) if enabled else {}
        self.wandb_run = self._start_wandb(overrides) if chosen.get("wandb") else None
        self.tensorboard = self._start_tensorboard() if chosen.get("tensorboard") else None

    def _start_wandb(self, overrides: str):
        lcfg = self.cfg.logger
        try:
            import wandb

            names = wandb_names(self.cfg, overrides)
            mode = os.environ.get("WANDB_MODE", lcfg.mode)
            # A stable id per run folder, so a resumed run continues the same W&B run; under a W&B sweep agent
            # the agent assigns the run instead.
            in_sweep = "WANDB_SWEEP_ID" in os.environ
            run_id = None if in_sweep else hashlib.sha1(str(self.folder.resolve()).encode()).hexdigest()[:16]
            init = functools.partial(
                wandb.init,
                project=lcfg.project,
                entity=lcfg.entity,
                group=lcfg.group or names["group"],
                name=lcfg.name or names["name"],
                tags=list(lcfg.tags) + names["tags"],
                config=OmegaConf.to_container(self.cfg, resolve=True),
                dir=str(self.folder),
                id=run_id,
                resume=None if in_sweep else "allow",
                reinit="finish_previous",
            )
            if mode == "online":
                # W&B waits 90 s for its server by default; without network every run would stall that long.
                timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", WANDB_INIT_TIMEOUT))
                try:
                    return init(mode="online", settings=wandb.Settings(init_timeout=timeout))
                except Exception as e:
                    reason = str(e).splitlines()[0] if str(e) else ""
                    warnings.warn(
                        f"W&B online not reachable within {timeout:g} s ({type(e).__name__}: {reason}): logging "
                        f"offline into {self.folder / 'wandb'} for this run (upload later with `wandb sync`; "
                        "WANDB_INIT_TIMEOUT=<seconds> waits longer)",
                        stacklevel=2,
                    )
                    wandb.teardown()  # the service still holds the run id the failed start claimed
                    mode = "offline"
            return init(mode=mode)
        except Exception as e:  # any tracker failure must not stop training
            warnings.warn(f"W&B disabled for this run: {type(e).__name__}: {e}", stacklevel=2)
            return None

    def _start_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter(log_dir=str(self.folder / self.cfg.logger.get("log_dir", "tensorboard")))
        except Exception as e:
            warnings.warn(f"TensorBoard disabled for this run: {type(e).__name__}: {e}", stacklevel=2)
            return None

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Send one metrics.csv row (keyed by its epoch)."""
        epoch = int(row["epoch"])
        if self.wandb_run is not None:
            try:
                self.wandb_run.log(dict(row), step=epoch)
            except Exception as e:
                warnings.warn(f"W&B logging failed, disabling it: {e}", stacklevel=2)
                self.wandb_run = None
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, epoch)
            self.tensorboard.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        """Attach the run's summary (a failed or interrupted run finishes as failed in W&B)."""
        self._exit_code = 0 if summary.get("status") in ("completed", "diverged") else 1
        if self.wandb_run is not None:
            try:
                self.wandb_run.summary.update({k: v for k, v in summary.items() if v is not None})
            except Exception as e:
                warnings.warn(f"W&B summary failed: {e}", stacklevel=2)

    def close(self) -> None:
        """Finish every tracker (always called, also when the run fails)."""
        if self.wandb_run is not None:
            try:
                self.wandb_run.finish(exit_code=self._exit_code)
            except Exception as e:
                warnings.warn(f"W&B finish failed: {e}", stacklevel=2)
            self.wandb_run = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
