"""Shared fixtures: tiny datasets in the real on-disk formats, config composition, and CLI runs."""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Fast tiny runs: the generated demo images, a few dozen examples, ResNet-20.
TINY = [
    "dataset=demo_images",
    "dataset.n_train=48",
    "dataset.n_test=32",
    "model=resnet20",
    "epochs=2",
    "batch_size=16",
    "eval_batch_size=32",
    "scheduler=constant",
    "progress=line",
]


def write_cifar(root: Path, name: str = "cifar10", n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """Write a tiny CIFAR-10/100 in the standard python layout (pickled dicts with bytes keys)."""
    rng = np.random.default_rng(seed)
    classes = 10 if name == "cifar10" else 100
    label_key = b"labels" if name == "cifar10" else b"fine_labels"

    def batch(n: int) -> dict:
        return {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: [int(x) for x in rng.integers(0, classes, n)],
            b"batch_label": b"tiny",
        }

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        per = n_train // 5
        for i in range(1, 6):
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per)))
        (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
        meta = {b"label_names": [f"class{i}".encode() for i in range(10)]}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train").write_bytes(pickle.dumps(batch(n_train)))
        (folder / "test").write_bytes(pickle.dumps(batch(n_test)))
        meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)]}
        (folder / "meta").write_bytes(pickle.dumps(meta))
    return folder


def make_cfg(overrides: list[str], **extra) -> DictConfig:
    """Compose ``conf/config.yaml`` with overrides, as ``python -m xgrad.run`` would (without Hydra's runtime)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with open_dict(cfg):
        for key, value in extra.items():
            cfg[key] = value
    return cfg


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m xgrad.run ARGS`` in ``cwd`` (offline, no W&B network)."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "xgrad.run", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class JobClock(Callback):
    """Hydra callback, run inside each job's process: writes ``job_clock.json`` in the job's folder with the job's
    start and end times and its ``CUDA_VISIBLE_DEVICES`` (``+hydra.callbacks.clock._target_=tests.conftest.JobClock``).
    """

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.start = time.time()

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        record = {"start": self.start, "end": time.time(), "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        (Path(config.hydra.runtime.output_dir) / "job_clock.json").write_text(json.dumps(record))


@pytest.fixture
def without_extra_optim(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if pytorch-optimizer (the ``extra-optim`` extra) were not installed; everything else imports as usual."""
    import xgrad.optim.factory as factory

    real = factory.importlib.import_module

    def missing(module, package=None):  # only the optional package is absent (importlib is shared: torch too)
        if module.startswith("pytorch_optimizer"):
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return real(module, package)

    monkeypatch.setattr(factory.importlib, "import_module", missing)


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    """A data_root holding tiny CIFAR-10 and CIFAR-100 pickles."""
    root = tmp_path / "data"
    write_cifar(root, "cifar10")
    write_cifar(root, "cifar100")
    return root


def train_killed_at(cfg, folder: Path, monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Train ``cfg`` into ``folder`` until a KeyboardInterrupt as (0-based) ``epoch`` starts, after the previous
    epoch's checkpoint was written: what a killed process leaves behind. ``Trainer`` is as before afterwards."""
    from xgrad.trainer import Trainer, train

    original = Trainer.train_epoch

    def dies(self, at):
        if at == epoch:
            raise KeyboardInterrupt
        return original(self, at)

    monkeypatch.setattr(Trainer, "train_epoch", dies)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, folder)
    monkeypatch.setattr(Trainer, "train_epoch", original)


def assert_resume_is_exact(overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Train ``overrides`` (3 epochs) whole, and again killed in epoch 3 then resumed; assert identical results.

    Returns the uninterrupted run's folder. The kill is a KeyboardInterrupt raised as epoch 3 starts, after
    epoch 2's checkpoint was written, which is what a killed process leaves behind.
    """
    import torch

    from xgrad.rundir import read_metrics, read_summary
    from xgrad.trainer import train

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    train(make_cfg(overrides), whole)
    train_killed_at(make_cfg(overrides), killed, monkeypatch, epoch=2)
    assert read_summary(killed)["status"] == "interrupted" and len(read_metrics(killed)) == 2
    assert train(make_cfg(overrides), killed).status == "completed"

    def comparable(rows):
        timing = ("epoch_seconds", "samples_per_second", "tokens_per_second")
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    assert comparable(read_metrics(killed)) == comparable(read_metrics(whole))
    a = torch.load(whole / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(killed / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    return whole


class FullDisk:
    """A file object whose writes fail as on a full disk (``OSError(ENOSPC)``)."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def fill_disk_at_second_checkpoint(patch) -> None:
    """Make the disk full from the second checkpoint write on (other files still fit, as the issue saw).

    ``patch(module, name, value)`` sets an attribute (``monkeypatch.setattr``); writes are recognised by the
    temporary file's name behind the descriptor ``os.fdopen`` gets.
    """
    original, seen = os.fdopen, []

    def fdopen(fd, *args, **kwargs):
        file = original(fd, *args, **kwargs)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) if os.path.exists("/proc/self/fd") else ""
        if name.startswith(".checkpoint.pt.") and name.endswith(".tmp"):
            seen.append(name)
            if len(seen) >= 2:
                return FullDisk(file)
        return file

    patch(os, "fdopen", fdopen)


def run_cli_with_full_disk(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``run_cli`` with :func:`fill_disk_at_second_checkpoint` in the runner's process."""
    driver = cwd / "full_disk_driver.py"
    driver.write_text(
        "import runpy, sys\n"
        "from tests.conftest import fill_disk_at_second_checkpoint\n"
        "fill_disk_at_second_checkpoint(setattr)\n"
        "sys.argv[0] = 'xgrad.run'\n"
        "runpy.run_module('xgrad.run', run_name='__main__', alter_sys=True)\n"
    )
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(driver), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
