"""``python -m xgrad.run [overrides]``: train one configuration (or a grid with ``-m``) into a run folder.

Examples::

    python -m xgrad.run optimizer=adamw predict=true
    python -m xgrad.run -m optimizer=sgdm,adamw predict=false,true seed=0,1,2 experiment=cifar10_resnet34
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from xgrad.data import DataError
from xgrad.rundir import SUMMARY, write_summary
from xgrad.trainer import ConfigError, base_summary, train

log = logging.getLogger("xgrad")



def run_name(overrides: str) -> str:
    """The folder name for Hydra's override dirname: booleans spelled one way (a sweep renders ``predict=False``
    where a command line says ``predict=false``), and ``default`` when there are no overrides."""
    return re.sub(r"=(True|False)(?=,|$)", lambda m: "=" + m.group(1).lower(), overrides) or "default"


OmegaConf.register_new_resolver("xgrad_dirname", run_name, replace=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: train ``cfg`` in its run folder; in a multirun, a failed job never stops the rest."""
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    overrides = run_name(hydra_cfg.job.override_dirname)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if (folder / SUMMARY).exists():
        os.utime(folder / SUMMARY)  # marks the job as part of this launch for the sweep summary
    try:
        result = train(cfg, folder, overrides)
    except (ConfigError, DataError) as e:
        log.error("%s", e)
        write_summary(folder, {**base_summary(cfg, overrides, "failed"), "error": str(e)})
        if multirun:
            return
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        if not multirun:
            raise
        log.exception("job failed (see %s); the sweep goes on", folder / SUMMARY)
        return
    if not multirun and int(os.environ.get("RANK", "0")) == 0:
        verb = "was already" if result.skipped else "is"
        print(f"run {verb} {result.status}: {folder}")


if __name__ == "__main__":
    main()
