"""scripts/reproduce.py: a tiny demo run, its report, one epoch re-run and compared (same, then tampered)."""

from __future__ import annotations

import importlib.util
import math
import signal
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, TINY, run_cli
from xgrad.report import cli
from xgrad.report.repro import compare


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_a_committed_run(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """2-epoch run: stopped after epoch 1 and compared; a committed number off by 5% fails with exit 1."""
    proc = run_cli([*TINY, "threads=1", "optimizer=adamw", "predict=true", f"hydra.run.dir={tmp_path}/runs/a"],
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = tmp_path / "report"
    assert cli.main([str(tmp_path / "runs"), "--out", str(report)]) == 0
    epochs = pd.read_csv(report / "runs_epochs.csv")
    assert list(epochs["epoch"]) == [1, 2] and "train_loss" in epochs
    reproduce = load_script().main
    capfd.readouterr()

    assert reproduce([str(report), "--rtol", "1e-6"]) == 0
    out = capfd.readouterr().out
    assert "reproduced: all" in out and "train_loss" in out and "test_acc" in out
    assert "stopped by this check after its first epoch" in out  # the child's "interrupted" is not a failure

    # launched in the background (SIGINT ignored, inherited by children) it still stops after the first epoch
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert reproduce([str(report), "--keep", str(tmp_path / "kept")]) == 0
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(pd.read_csv(tmp_path / "kept" / "run" / "metrics.csv")) == 1
    capfd.readouterr()

    epochs.loc[epochs["epoch"] == 1, "train_loss"] *= 1.05  # as if the committed number were another run's
    epochs.to_csv(report / "runs_epochs.csv", index=False)
    assert reproduce([str(report), "--rtol", "0.02"]) == 1
    changed = capfd.readouterr()
    assert "DIFFERENT: train_loss" in changed.err
    row = next(line for line in changed.out.splitlines() if line.strip().startswith("train_loss"))
    assert "False" in row

    assert reproduce([str(tmp_path / "runs")]) == 2  # not a report folder
    assert reproduce([str(report), "--run", "no-such-run"]) == 2
    assert "matches 0 runs" in capfd.readouterr().err


def test_compare_numbers() -> None:
    table = compare(
        {"epoch": 1, "train_loss": 2.0, "test_acc": 0.50, "val_ppl": math.nan, "epoch_seconds": 9.0, "lr": 0.1},
        {"epoch": 1, "train_loss": 2.03, "test_acc": 0.52, "val_ppl": math.nan, "epoch_seconds": 1.0, "lr": 0.1},
        rtol=0.02,
    ).set_index("metric")
    assert list(table.index) == ["train_loss", "test_acc", "val_ppl", "lr"]  # timing and epoch not compared
    assert table.loc["train_loss", "difference"] == pytest.approx(0.03)
    assert table.loc["train_loss", "within"]  # 0.03 <= 0.02 * 2.0
    assert not table.loc["test_acc", "within"]  # 0.02 > 0.02 * 0.5
    assert table.loc["val_ppl", "within"] and table.loc["lr", "within"]  # NaN reproduced as NaN
