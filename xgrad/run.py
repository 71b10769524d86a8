"""``python -m xgrad.run [overrides]``: train one configuration (or a grid with ``-m``) into a run folder.

Examples::

    python -m xgrad.run optimizer=adamw predict=true
    python -m xgrad.run -m optimizer=sgdm,adamw predict=false,true seed=0,1,2 experiment=cifar10_resnet34
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from xgrad.data import DataError
from xgrad.errors import ConfigError, DiskFull, FolderInUse, ResumeError, RunFolderError, error_text
from xgrad.identity import run_name
from xgrad.rundir import SUMMARY, read_summary_if_valid, write_summary
from xgrad.sweep import BUSY, REFUSED, record_event, remove_created
from xgrad.trainer import base_summary, train

log = logging.getLogger("xgrad")


# The folder a run goes to: the overrides that change its configuration, spelled by their resolved values.
OmegaConf.register_new_resolver("xgrad_dirname", lambda overrides: run_name(overrides), replace=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: train ``cfg`` in its run folder; in a multirun, a failed job never stops the rest."""
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    overrides = run_name(hydra_cfg.overrides.task)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        result = train(cfg, folder, overrides)
    except RunFolderError as e:  # another process's or another configuration's folder: nothing is written there
        log.error("%s", e)
        if multirun:  # the sweep summary lists it
            status = BUSY if isinstance(e, FolderInUse) else REFUSED
            record_event(Path(hydra_cfg.sweep.dir), folder, status, str(e))
            return
        _reject(folder, e)
    except (ConfigError, DataError, ResumeError) as e:
        log.error("%s", e)
        if multirun:  # the sweep summary lists it
            _record_failure(folder, cfg, overrides, str(e))
            return
        _reject(folder, e)
    except DiskFull as e:  # earlier epochs are intact: the same command resumes once there is space
        log.error("%s", e)
        if multirun:
            _record_failure(folder, cfg, overrides, error_text(e), only_if_unrecorded=True)
            return
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {folder}\nre-run the same command to resume from the last finished epoch",
              file=sys.stderr)  # fmt: skip
        sys.exit(130)
    except Exception as e:
        if not multirun:
            raise
        log.exception("job failed (see %s); the sweep goes on", folder / SUMMARY)
        _record_failure(folder, cfg, overrides, error_text(e), only_if_unrecorded=True)
        return
    if result.skipped and multirun:  # counted by the sweep summary (its summary.json is an earlier launch's)
        record_event(Path(hydra_cfg.sweep.dir), folder, result.status, "")
    if not multirun and int(os.environ.get("RANK", "0")) == 0:
        verb = "was already" if result.skipped else "is"
        print(f"run {verb} {result.status}: {folder}")


def _reject(folder: Path, error: Exception) -> None:
    """End a rejected single run: remove what its launch created (nothing that was there before), one line, exit 2."""
    remove_created(folder)
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def _record_failure(
    folder: Path, cfg: DictConfig, overrides: str, error: str, only_if_unrecorded: bool = False
) -> None:
    """Mark a sweep job failed in its summary.json (unless training already did); on a full disk, in the sweep's
    event file instead, so that the sweep summary still lists it."""
    summary = read_summary_if_valid(folder)
    if only_if_unrecorded and summary and summary.get("status") == "failed":
        return
    try:
        write_summary(folder, {**base_summary(cfg, overrides, "failed"), "error": error})
    except (OSError, DiskFull) as e:
        log.error("cannot write %s: %s", folder / SUMMARY, e)
        with contextlib.suppress(OSError):
            record_event(Path(HydraConfig.get().sweep.dir), folder, "failed", error)


if __name__ == "__main__":
    main()
