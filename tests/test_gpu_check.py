"""scripts/gpu_check.py: its CPU mode passes and writes its report (so it cannot rot); without a GPU it says so."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

SCRIPT = str(ROOT / "scripts" / "gpu_check.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_gpu_check_on_cpu_passes_every_check_and_writes_its_report(tmp_path):
    out = tmp_path / "gpu_check.md"
    proc = subprocess.run([sys.executable, SCRIPT, "--device", "cpu", "--out", str(out)], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=400)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ") and " | " in line]
    results = {(r[0].lstrip("| "), r[1]): r[2] for r in rows[1:] if len(r) == 4}
    assert set(results.values()) <= {"pass", "skipped"}
    names = {name for name, _ in results}
    assert {"run", "host syncs", "fp32 vs bf16", "channels_last", "compile", "cudnn chunk", "cost"} <= names
    for task in ("image", "text"):
        for precision in ("fp32", "bf16", "fp16"):
            for predict in ("false", "true"):
                assert any(n == "run" and s.startswith(task) and f"precision={precision}, predict={predict}" in s
                           and results[n, s] == "pass" for n, s in results)  # fmt: skip
    assert results["ddp", "torchrun --nproc_per_node=2, NCCL, image, predict=true"] == "skipped"
    assert "## Cost of prediction" in out.read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run its checks")
def test_gpu_check_without_a_gpu_says_so_in_one_line_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path / "r.md")], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "no CUDA GPU" in proc.stderr
    assert not (tmp_path / "r.md").exists()
