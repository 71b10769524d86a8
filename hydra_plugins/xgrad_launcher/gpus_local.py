"""``hydra/launcher=gpus_local``: a sweep on one machine with several GPUs, one GPU per running job.

A job starts only when a GPU is free, in a fresh process (submitit's local executor) whose ``CUDA_VISIBLE_DEVICES``
names that one GPU, so it is set before CUDA initialises. Jobs running at the same time never share a GPU, and at
most N run at once: a 90-job grid on 4 GPUs runs 4 at a time. The GPUs are ``hydra.launcher.gpus``: null (the ones
``CUDA_VISIBLE_DEVICES`` lists, else all ``torch.cuda.device_count()``), a count N (GPUs 0..N-1) or a list of ids.

The scheduling is in this one process, which alone hands out GPUs, so no locking is needed; two sweeps at once on
one machine each need their own GPUs (``CUDA_VISIBLE_DEVICES=0,1`` for one, ``2,3`` for the other).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

__all__ = ["GPUPoolLauncher", "gpu_pool"]


def gpu_pool(gpus: Any) -> list[int]:
    """The GPU ids to hand out for ``hydra.launcher.gpus``; a bad value is a ValueError naming it."""
    if OmegaConf.is_config(gpus):
        gpus = OmegaConf.to_container(gpus)
    accepted = "accepted null (all visible GPUs), a count >= 1, or a list of distinct GPU ids >= 0"
    if gpus is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            import torch

            return list(range(torch.cuda.device_count()))
        try:
            return [int(x) for x in visible.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"CUDA_VISIBLE_DEVICES={visible!r} is not a list of GPU indices: set hydra.launcher.gpus=[0,1,...]"
            ) from None
    if isinstance(gpus, int) and not isinstance(gpus, bool) and gpus >= 1:
        return list(range(gpus))
    if (isinstance(gpus, list) and gpus and len(set(gpus)) == len(gpus)
            and all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus)):  # fmt: skip
        return list(gpus)
    raise ValueError(f"invalid hydra.launcher.gpus={gpus!r}: {accepted}")


class GPUPoolLauncher(Launcher):
    """Run a sweep's jobs in fresh processes, each on a GPU no running job holds, at most one job per GPU."""

    def __init__(self, gpus: Any = None, timeout_min: float = 4320, submitit_folder: str = ".submitit/%j",
                 poll_seconds: float = 0.5) -> None:  # fmt: skip
        self.gpus, self.timeout_min, self.poll_seconds = gpus, timeout_min, poll_seconds
        self.submitit_folder = submitit_folder
        self.devices: list[int] = []
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Hydra's hook before the sweep: keep the job context and check the GPUs (before anything is written)."""
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        try:
            self.devices = gpu_pool(self.gpus)
            if not self.devices:
                raise ValueError("hydra/launcher=gpus_local: no GPU found (hydra.launcher.gpus=N hands out N)")
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Start each job when a GPU is free; return the jobs' results in order once all have ended."""
        import submitit

        assert self.config is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        devices = self.devices
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("GPU pool launcher: %d jobs on GPUs %s, one job per GPU; sweep dir %s",
                 len(job_overrides), devices, sweep_dir)  # fmt: skip
        executor = submitit.LocalExecutor(folder=self.submitit_folder)
        free, running, jobs = list(devices), {}, []
        try:
            for num, overrides in enumerate(job_overrides, start=initial_job_idx):
                while not free:
                    free += self._wait_for_ended(running)
                device = free.pop(0)
                executor.update_parameters(timeout_min=self.timeout_min, tasks_per_node=1, gpus_per_node=1,
                                           visible_gpus=(device,))  # fmt: skip
                job = executor.submit(self, list(overrides), num, Singleton.get_state())
                log.info("\t#%d on GPU %d: %s", num, device, " ".join(filter_overrides(overrides)))
                running[job] = device
                jobs.append(job)
            while running:
                self._wait_for_ended(running)
        except BaseException:
            for job in running:  # Ctrl-C or a launcher error: stop the jobs (a rerun resumes them)
                job.cancel(check=False)
            raise
        return [job.results()[0] for job in jobs]

    def _wait_for_ended(self, running: dict[Any, int]) -> list[int]:
        """Remove the jobs that ended from ``running`` (waiting until one has); return their GPUs."""
        while True:
            ended = [job for job in running if job.done()]
            if ended:
                return [running.pop(job) for job in ended]
            time.sleep(self.poll_seconds)

    def __call__(self, overrides: list[str], num: int, singleton_state: dict[Any, Any]) -> JobReturn:
        """Run one job (in the job's own process, started by submitit)."""
        import submitit

        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        Singleton.set_state(singleton_state)
        setup_globals()
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config.hydra.job) as job:
            job.id = submitit.JobEnvironment().job_id
            job.num = num
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=sweep_config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")  # fmt: skip
