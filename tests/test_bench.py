"""The benchmark scripts run end to end and write their tables (timings themselves are not tested)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_bench_predict_writes_table(tmp_path):
    out = tmp_path / "bench.md"
    cmd = [sys.executable, "scripts/bench_predict.py", "--device", "cpu", "--models", "resnet20", "--optimizers",
           "adamw", "muon", "--repeats", "2", "--step-repeats", "2", "--no-compiled", "--threads", "1",
           "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    text = out.read_text()
    assert "Command: `python scripts/bench_predict.py --device cpu" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| cpu |")]
    # The rule and extrapolation for AdamW; Muon has no rule.
    assert [(r[2].strip(), r[3].strip()) for r in rows] == [
        ("adamw", "rule"), ("adamw", "extrapolate"), ("muon", "extrapolate")
    ]  # fmt: skip
    for row in rows:
        assert row[6].strip().endswith("x") and float(row[6].strip()[:-1]) > 0  # ratio to step
        assert row[9].strip() == "n/a"  # compile skipped
        assert row[-1].strip() == "1.03 (1.03)"  # one copy of ResNet-20's 269,722 float32 parameters
    assert rows[0][7].strip() != "n/a" and rows[1][7].strip() == "n/a"  # the naive reference: rules only
