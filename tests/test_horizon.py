"""The horizon table of the report: per optimizer and s, the final metric, Δ vs without and the prediction error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from tests.test_report import write_run
from xgrad.report import cli
from xgrad.report.build import with_variants
from xgrad.report.collect import collect, runs_frame
from xgrad.report.horizon import horizon_frame
from xgrad.report.tables import comparison

# Final test accuracy per seed (the curves' last values) for SGDM at s = 0 (without), 1 and 2.
FINAL = {0.0: [0.900, 0.905, 0.890], 1.0: [0.915, 0.912, 0.905], 2.0: [0.890, 0.900, 0.880]}


def _write_study(root: Path) -> None:
    """SGDM at three horizons with the prediction error measured per epoch; Adam with s = 1 only."""
    for steps, finals in FINAL.items():
        for seed, final in enumerate(finals):
            folder = write_run(root, optimizer="sgdm", predict=steps > 0, steps=steps or 1.0, seed=seed,
                               curve=[0.5, 0.8, final])  # fmt: skip
            if steps:
                metrics = pd.read_csv(folder / "metrics.csv")
                # run means over epochs: s=1 -> 0.4, 0.5, 0.6; s=2 -> 1.2, 1.3, 1.4 (error); cosine 0.9 - 0.01 seed
                metrics["prediction_error"] = [0.8 * steps - 0.4 + 0.1 * seed + d for d in (-0.2, 0.0, 0.2)]
                metrics["prediction_cosine"] = 0.9 - 0.01 * seed - 0.1 * (steps - 1)
                metrics.to_csv(folder / "metrics.csv", index=False)
    for predict in (False, True):
        for seed in range(3):
            write_run(root, optimizer="adam", predict=predict, seed=seed, curve=[0.5, 0.7, 0.8 + 0.01 * seed])


def test_horizon_rows_hold_each_s_beside_the_baseline(tmp_path: Path) -> None:
    _write_study(tmp_path)
    collection = collect([tmp_path])
    sub = with_variants(runs_frame(collection.runs))
    comparisons = {s: comparison(sub, s) for s in (1.0, 2.0)}
    frame = horizon_frame(collection.runs, sub, comparisons)
    assert frame["optimizer"].tolist() == ["sgdm"] * 3  # Adam ran one horizon only: nothing to compare
    assert frame["steps"].tolist() == [0.0, 1.0, 2.0]
    assert frame["final_mean"].tolist() == pytest.approx([89.8333333, 91.0666667, 89.0])
    assert frame["final_diff"].tolist()[1:] == pytest.approx([1.2333333, -0.8333333])
    for row, steps in zip(frame.iloc[1:].itertuples(), (1.0, 2.0)):
        diffs = [100 * (w - b) for w, b in zip(FINAL[steps], FINAL[0.0])]
        low, high = stats.ttest_rel(
            [100 * v for v in FINAL[steps]], [100 * v for v in FINAL[0.0]]
        ).confidence_interval()
        assert (row.final_ci_low, row.final_ci_high) == pytest.approx((low, high))
        assert sum(diffs) / 3 == pytest.approx(row.final_diff)
    assert frame["error_mean"].tolist()[1:] == pytest.approx([0.5, 1.3])
    assert frame["error_std"].tolist()[1:] == pytest.approx([0.1, 0.1])
    assert frame["cosine_mean"].tolist()[1:] == pytest.approx([0.89, 0.79])
    assert pd.isna(frame["error_mean"].iloc[0]) and frame["n"].tolist() == [3, 3, 3]


def test_report_writes_the_horizon_table_only_with_several_horizons(tmp_path: Path) -> None:
    _write_study(tmp_path / "runs")
    assert cli.main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    (table,) = (tmp_path / "report").glob("horizon_*.md")
    text = table.read_text()
    assert "| SGDM | 2 | 0.1 | 3 | 89.00 ± 1.00 | -0.83 [" in text and "| 1.300 ± 0.100 | 0.790 ± 0.010 |" in text
    index = (tmp_path / "report" / "README.md").read_text()
    assert table.name in index and "Accuracies are in percent." in index
    for folder in (tmp_path / "runs").glob("*/optimizer=sgdm,predict=true,predict_steps=2"):
        shutil.rmtree(folder)
    assert cli.main([str(tmp_path / "runs"), "--out", str(tmp_path / "one")]) == 0
    assert not list((tmp_path / "one").glob("horizon_*"))
