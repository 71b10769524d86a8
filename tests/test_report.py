"""python -m xgrad.report: reading run folders, table numbers, figures, references, W&B, error paths, CLI."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from tests.conftest import ROOT, TINY, make_cfg
from xgrad.report import cli
from xgrad.report.build import with_variants
from xgrad.report.collect import (
    Collection,
    collect,
    drop_duplicate_seeds,
    read_folder,
    runs_frame,
    split_overrides,
)
from xgrad.report.figures import convergence_figure, prediction_error_figure
from xgrad.report.reference import load_reference, match_reference
from xgrad.report.tables import comparison, cost, cost_table, diff_cell, holm, paired_test, verdict
from xgrad.report.wandb_source import load_wandb

# ----------------------------------------------------------------------------------- synthetic run folders


def write_run(
    root: Path,
    *,
    dataset: str = "cifar10",
    model: str = "resnet34",
    optimizer: str = "sgdm",
    predict: bool = False,
    steps: float = 1.0,
    seed: int = 0,
    curve: list[float] | None = None,
    status: str = "completed",
    task: str = "classification",
    num_layers: int | None = None,
    **summary_extra,
) -> Path:
    """A run folder as the runner writes it: summary.json, metrics.csv, .hydra/config.yaml.

    ``curve`` is the test metric per epoch (accuracy as a fraction, or perplexity); final and best follow from it
    (best = the best test epoch, as without a validation split).
    """
    metric = "acc" if task == "classification" else "ppl"
    curve = curve if curve is not None else [0.5, 0.6, 0.7]
    overrides = f"optimizer={optimizer},predict={str(predict).lower()}"
    overrides += f",predict_steps={steps:g}" if predict else ""
    folder = root / f"{dataset}_{model}" / overrides / f"seed={seed}"
    folder.mkdir(parents=True)
    rows = []
    for epoch, value in enumerate(curve, start=1):
        rows.append({
            "epoch": epoch, "lr": 0.1, "train_loss": 2.0 / epoch + 0.01 * seed, f"train_{metric}": value,
            "test_loss": 2.1 / epoch, f"test_{metric}": value,
            "epoch_seconds": 1.0 + 0.25 * predict + 0.01 * seed, "samples_per_second": 1000.0,
        })  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)
    finite = [v for v in curve if math.isfinite(v)]
    best = (max if metric == "acc" else min)(finite) if finite else None
    summary = {
        "schema_version": 1, "status": status, "task": task, "dataset": dataset, "model": model,
        "optimizer": optimizer, "predict": predict, "predict_steps": steps if predict else 0.0, "seed": seed,
        "overrides": overrides, "synthetic": False, "reduced_scale": False, "epochs": len(curve),
        "epochs_done": len(curve), f"final_test_{metric}": curve[-1] if math.isfinite(curve[-1]) else None,
        f"best_test_{metric}": best, "best_epoch": curve.index(best) + 1 if best is not None else None,
        "best_selected_on": "test", "wall_seconds": 10.0,
        "train_seconds": len(curve) * (0.8 + 0.2 * predict + 0.01 * seed),
        "peak_memory_bytes": int(100 * 2**20 * (1.5 if predict else 1.0)), "device": "cuda (test)",
        **summary_extra,
    }  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    config = {"seed": seed, "predict": predict, "predict_steps": steps, "dataset": {"name": dataset},
              "model": {"name": model, **({"num_layers": num_layers} if num_layers else {})},
              "optimizer": {"name": optimizer, "lr": 0.1}}  # fmt: skip
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


# Final test accuracies by (optimizer, predict, seed): a full 3-seed SGDM grid for the paired test, AdamW with a
# diverged seed (2 pairs left), Adam without prediction only (a mixed grid).
GRID = {
    ("sgdm", False): {0: [0.80, 0.88, 0.900], 1: [0.82, 0.90, 0.905], 2: [0.79, 0.87, 0.890]},
    ("sgdm", True): {0: [0.83, 0.90, 0.915], 1: [0.84, 0.91, 0.912], 2: [0.81, 0.89, 0.905]},
    ("adamw", False): {0: [0.70, 0.85, 0.860], 1: [0.72, 0.86, 0.850]},
    ("adamw", True): {0: [0.75, 0.87, 0.870], 1: [0.74, 0.86, 0.880]},
    ("adam", False): {0: [0.70, 0.82, 0.830]},
}
PTB = {
    ("sgd", False, 1.0): {0: [300.0, 200.0, 150.0], 1: [310.0, 205.0, 149.0]},
    ("adam", False, 1.0): {0: [250.0, 180.0, 140.0]},
    ("adam", True, 1.0): {0: [240.0, 170.0, 135.0]},
    ("adam", True, 2.0): {0: [245.0, 175.0, 138.0]},
}


def make_results(root: Path) -> Path:
    """A results folder: the CIFAR-10 grid, a PTB LSTM grid with two horizons, and every kind of bad folder."""
    for (optimizer, predict), seeds in GRID.items():
        for seed, curve in seeds.items():
            write_run(root, optimizer=optimizer, predict=predict, seed=seed, curve=curve)
    write_run(root, optimizer="adamw", predict=True, seed=2, curve=[0.7, float("nan")], status="diverged")
    for (optimizer, predict, steps), seeds in PTB.items():
        for seed, curve in seeds.items():
            write_run(root, dataset="ptb", model="lstm", optimizer=optimizer, predict=predict, steps=steps,
                      seed=seed, curve=curve, task="language_model", num_layers=2)  # fmt: skip
    bad = root / "bad"
    write_run(bad / "failed", status="failed", error="RuntimeError: boom")
    write_run(bad / "running", status="running", epochs_done=1)
    (write_run(bad / "corrupt") / "summary.json").write_text("{not json")
    (write_run(bad / "no_metrics") / "metrics.csv").unlink()
    write_run(bad / "old_schema", schema_version=99)
    return root


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def report(results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert cli.main([str(results), "--out", str(out), "--reference"]) == 0
    return out


def _row(table: pd.DataFrame, optimizer: str) -> pd.Series:
    return table[table["optimizer"] == optimizer].iloc[0]


# ----------------------------------------------------------------------------------- tables


def test_table_numbers_match_a_direct_computation(report: Path) -> None:
    table = pd.read_csv(report / "table_cifar10_resnet34.csv")
    row = _row(table, "sgdm")
    for what, pick in (("final", lambda c: c[-1]), ("best", max)):
        without = np.array([pick(GRID[("sgdm", False)][s]) for s in range(3)]) * 100
        with_ = np.array([pick(GRID[("sgdm", True)][s]) for s in range(3)]) * 100
        assert row[f"{what}_without_mean"] == pytest.approx(without.mean())
        assert row[f"{what}_without_std"] == pytest.approx(without.std(ddof=1))
        assert row[f"{what}_with_mean"] == pytest.approx(with_.mean())
        assert row[f"{what}_with_std"] == pytest.approx(with_.std(ddof=1))
        assert row[f"{what}_diff"] == pytest.approx(with_.mean() - without.mean())
        assert row[f"{what}_p_value"] == pytest.approx(stats.ttest_rel(with_, without).pvalue)
        assert row[f"{what}_n_paired"] == 3
        assert re.fullmatch(r"(yes|no) \((p=\d\.\d{3}|p<0\.001), n=3\)", row[f"{what}_holds_up"])
    assert (row["n_without"], row["n_with"]) == (3, 3)
    # final: differences 1.5, 0.7, 1.5 points, t = 4.62 on 2 df, p = 0.044, the table's only test: helped
    assert row["final_p_value"] == pytest.approx(0.0438, abs=5e-4)
    assert row["final_verdict"] == "helped"
    assert _row(table, "adamw")["final_verdict"] == "too few seeds"


def test_verdict_words_follow_the_metric_direction_and_holm() -> None:
    assert verdict(+1.0, 0.01, 3, higher=True) == "helped"
    assert verdict(-1.0, 0.01, 3, higher=True) == "hurt"
    assert verdict(-3.0, 0.01, 3, higher=False) == "helped"  # lower perplexity
    assert verdict(+3.0, 0.01, 3, higher=False) == "hurt"
    assert verdict(+1.0, 0.06, 3, higher=True) == "could not be told apart"  # Holm-adjusted p above 0.05
    assert verdict(0.0, math.nan, 3, higher=True) == "could not be told apart"  # equal on every seed
    assert verdict(+5.0, math.nan, 2, higher=True) == "too few seeds"


def test_diverged_seeds_are_counted_not_averaged(report: Path) -> None:
    table = pd.read_csv(report / "table_cifar10_resnet34.csv")
    adamw = _row(table, "adamw")
    assert (adamw["n_with"], adamw["diverged_with"]) == (2, 1)
    assert adamw["final_with_mean"] == pytest.approx(np.mean([87.0, 88.0]))
    assert adamw["final_holds_up"] == "too few seeds (n=2) for a test"
    markdown = (report / "table_cifar10_resnet34.md").read_text()
    assert "2 (1 diverged)" in markdown


def test_mixed_grid_still_gives_a_row(report: Path) -> None:
    adam = _row(pd.read_csv(report / "table_cifar10_resnet34.csv"), "adam")
    assert adam["n_without"] == 1 and adam["n_with"] == 0
    assert adam["final_without_mean"] == pytest.approx(83.0)
    assert math.isnan(adam["final_with_mean"]) and math.isnan(adam["final_diff"])


def test_markdown_and_latex_mark_the_best_entry(report: Path) -> None:
    markdown = (report / "table_cifar10_resnet34.md").read_text()
    sgdm_line = next(line for line in markdown.splitlines() if line.startswith("| SGDM"))
    best_without = np.mean([GRID[("sgdm", False)][s][-1] for s in range(3)]) * 100
    assert f"**{best_without:.2f} ± " in sgdm_line  # SGDM beats AdamW and Adam without prediction
    assert "at the best test epoch" in markdown  # says which epoch "best" means
    latex = (report / "table_cifar10_resnet34.tex").read_text()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert latex.count(rule) == 1
    assert "\\textbf{" in latex and "$\\pm$" in latex and "\\%" in latex


def test_perplexity_tables_one_per_horizon_with_published_numbers(report: Path) -> None:
    for steps in ("1", "2"):
        table = pd.read_csv(report / f"table_ptb_lstm_s{steps}.csv")
        assert set(table["predict_steps"]) == {float(steps)}
        adam = _row(table, "adam")
        expected = {"1": 135.0, "2": 138.0}[steps]
        assert adam["final_with_mean"] == pytest.approx(expected)
    sgd = _row(pd.read_csv(report / "table_ptb_lstm_s1.csv"), "sgd")
    assert sgd["ref_value"] == pytest.approx(114.5) and sgd["ref_setting"] == "zaremba_small"
    assert sgd["final_without_mean"] == pytest.approx(149.5)
    markdown = (report / "table_ptb_lstm_s1.md").read_text()
    assert "114.50 [1]" in markdown and "Zaremba et al. 2014" in markdown
    assert "test perplexity" in markdown and "lower is better" in markdown


def test_cost_table_ratios(report: Path) -> None:
    cost = pd.read_csv(report / "cost.csv")
    sgdm = cost[(cost["dataset"] == "cifar10") & (cost["optimizer"] == "sgdm")].iloc[0]
    seconds = [0.8 + 0.01 * s for s in range(3)]  # training time per epoch; epoch_seconds adds evaluation
    assert sgdm["seconds_without"] == pytest.approx(np.mean(seconds))
    assert sgdm["seconds_ratio"] == pytest.approx(np.mean([s + 0.2 for s in seconds]) / np.mean(seconds))
    assert sgdm["memory_mib_ratio"] == pytest.approx(1.5)


def test_cost_table_says_when_prediction_runs_include_the_error_measurement() -> None:
    """The meter's float64 copies count in the with-prediction runs' peak memory: the table must say so."""
    base = {"status": "completed", "dataset": "ptb", "model": "lstm", "reduced_scale": False, "optimizer": "sgdm",
            "variant": "", "seed": 0, "train_epoch_seconds": 1.0, "peak_memory_bytes": 2.0**20}  # fmt: skip
    frame = pd.DataFrame([
        {**base, "predict": False, "steps": 0.0, "measured_error": False},
        {**base, "predict": True, "steps": 1.0, "measured_error": True, "peak_memory_bytes": 3 * 2.0**20},
    ])  # fmt: skip
    numbers = cost(frame)
    assert list(numbers["measured_with"]) == [True]
    notes = " ".join(cost_table(numbers, {"cuda:0"}).notes)
    assert "prediction_error_every=0" in notes and "two float64 copies" in notes
    frame["measured_error"] = False  # measured off: no such note
    assert not any("prediction_error" in n for n in cost_table(cost(frame), {"cuda:0"}).notes)


def test_runs_frame_knows_which_runs_measured_the_prediction_error() -> None:
    """From metrics.csv's prediction_error column (what really ran), not from the configuration."""
    metrics = pd.DataFrame({"epoch": [1, 2], "prediction_error": [math.nan, 0.3]})
    run = SimpleNamespace(source="x", metric="acc", summary={
        "status": "completed", "dataset": "cifar10", "model": "resnet20", "optimizer": "sgdm", "predict": True,
        "predict_steps": 1.0, "seed": 0, "overrides": ""}, metrics=metrics, config={})  # fmt: skip
    assert runs_frame([run])["measured_error"].tolist() == [True]
    run.metrics = metrics.drop(columns="prediction_error")
    assert runs_frame([run])["measured_error"].tolist() == [False]


def test_index_links_every_file_and_lists_skipped(report: Path) -> None:
    index = (report / "README.md").read_text()
    for link in re.findall(r"\]\(([^)]+)\)", index):
        assert (report / link).is_file(), link
    for path in report.iterdir():
        if path.name != "README.md" and not path.name.startswith("."):  # .xgrad-report-files: the manifest
            assert f"({path.name})" in index, path.name
    reasons = {
        "failed": "failed: RuntimeError: boom",
        "running": "partial (status running",
        "corrupt": "unreadable summary.json",
        "no_metrics": "metrics.csv is missing",
        "old_schema": "schema mismatch",
    }
    for folder, reason in reasons.items():
        line = next(line for line in index.splitlines() if f"/bad/{folder}/" in line)
        assert reason in line
    assert "Runs used: 17 (16 completed, 1 diverged); skipped: 5" in index
    # provenance of the 17 runs read (write_run: wall_seconds 10 each, no torch_version or git_commit recorded)
    assert "Made by: torch unknown on cuda (test); code at commit unknown; seeds 0, 1, 2." in index
    assert "Time: 0.05 h of run wall time summed over the 17 runs read" in index


# ----------------------------------------------------------------------------------- figures


def _figure(results: Path, dataset: str):
    collection = collect([results])
    frame = runs_frame(collection.runs)
    sub = with_variants(frame[frame["dataset"] == dataset])
    return convergence_figure(collection.runs, sub, dataset)


def test_figure_panels_series_and_styles(results: Path) -> None:
    fig = _figure(results, "cifar10")
    assert len(fig.axes) == 2
    loss, accuracy = fig.axes
    assert "loss" in loss.get_ylabel() and accuracy.get_ylabel() == "test accuracy (%)"
    for ax in fig.axes:
        lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
        assert set(lines) == {
            "SGDM, without weight prediction (3 seeds)",
            "SGDM, with weight prediction (3 seeds)",
            "AdamW, without weight prediction (2 seeds)",
            "AdamW, with weight prediction (2 seeds, 1 diverged)",
            "Adam, without weight prediction (1 seed)",
        }
        for label, line in lines.items():
            assert line.get_linestyle() == ("--" if "without" in label else "-")
        assert lines["SGDM, with weight prediction (3 seeds)"].get_color() != lines[
            "AdamW, with weight prediction (2 seeds, 1 diverged)"].get_color()  # fmt: skip
        assert any(line.get_label().startswith("_diverged") for line in ax.get_lines())
    sgdm = next(line for line in accuracy.get_lines() if line.get_label() == "SGDM, with weight prediction (3 seeds)")
    expected = np.mean([GRID[("sgdm", True)][s] for s in range(3)], axis=0) * 100
    np.testing.assert_allclose(sgdm.get_ydata(), expected)
    assert len(accuracy.collections) >= 4  # ±1 std bands of the multi-seed series


def test_perplexity_figure_is_log_scale_with_a_style_per_horizon(results: Path) -> None:
    fig = _figure(results, "ptb")
    assert fig.axes[1].get_yscale() == "log" and "perplexity" in fig.axes[1].get_ylabel()
    styles = {line.get_label(): line.get_linestyle() for line in fig.axes[1].get_lines()}
    assert styles["Adam, with weight prediction, s=1 (1 seed)"] == "-"
    assert styles["Adam, with weight prediction, s=2 (1 seed)"] == "-."


def test_every_registered_optimizer_has_its_own_colour() -> None:
    from xgrad.optim import OPTIMIZERS
    from xgrad.report.figures import COLOURS, SPARE

    colours = [COLOURS[name] for name in OPTIMIZERS]
    assert len(set(colours)) == len(colours) and not set(colours) & set(SPARE)


def test_prediction_error_figure_draws_the_seed_means(tmp_path: Path) -> None:
    errors = {0: [0.5, 0.3, 0.2], 1: [0.7, 0.5, 0.4]}
    cosines = {0: [0.8, 0.9, 0.95], 1: [0.6, 0.7, 0.75]}
    for seed in errors:
        folder = write_run(tmp_path, optimizer="nadam", predict=True, seed=seed)
        metrics = pd.read_csv(folder / "metrics.csv")
        metrics["prediction_error"], metrics["prediction_cosine"] = errors[seed], cosines[seed]
        metrics.to_csv(folder / "metrics.csv", index=False)
    write_run(tmp_path, optimizer="nadam", predict=False)
    collection = collect([tmp_path])
    sub = with_variants(runs_frame(collection.runs))
    fig = prediction_error_figure(collection.runs, sub, "title")
    error_ax, cosine_ax = fig.axes
    [error_line] = [line for line in error_ax.get_lines() if not line.get_label().startswith("_")]
    assert error_line.get_label() == "NAdam, with weight prediction (2 seeds)"
    np.testing.assert_allclose(error_line.get_ydata(), [0.6, 0.4, 0.3])
    np.testing.assert_allclose(cosine_ax.get_lines()[0].get_ydata(), [0.7, 0.8, 0.85])
    assert error_ax.get_yscale() == "log"
    assert prediction_error_figure(collection.runs, sub[~sub["predict"]], "title") is None  # nothing measured


def test_figure_files_open(report: Path) -> None:
    for name in ("convergence_cifar10_resnet34", "convergence_ptb_lstm"):
        image = matplotlib.image.imread(report / f"{name}.png")
        assert image.ndim == 3 and image.shape[1] > 1000
        assert (report / f"{name}.pdf").read_bytes().startswith(b"%PDF")


def test_figures_are_byte_identical_when_rebuilt(results: Path, tmp_path: Path) -> None:
    for out in ("a", "b"):
        assert cli.main([str(results), "--out", str(tmp_path / out)]) == 0
    for name in ("convergence_cifar10_resnet34.pdf", "convergence_cifar10_resnet34.png", "table_ptb_lstm_s2.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


# ----------------------------------------------------------------------------------- pieces


def test_paired_test_words() -> None:
    a, b = pd.Series([1.0, 2.0]), pd.Series([1.5, 2.5])
    assert paired_test(b, a)[2] == "too few seeds (n=2) for a test"
    a, b = pd.Series([1.0, 2.0, 3.0]), pd.Series([1.1, 2.3, 3.2])
    p, n, words, _, _ = paired_test(b, a)
    assert p == pytest.approx(stats.ttest_rel(b, a).pvalue) and n == 3 and words.startswith(("yes", "no"))
    assert paired_test(pd.Series([1.0, 2.0, 3.0], index=[0, 1, 5]), a)[1] == 2  # only matching seeds pair up


def test_paired_interval_is_scipys_t_interval() -> None:
    """Hand-made seeds: the interval is scipy's ttest_rel interval, and the mean difference lies at its centre."""
    without = pd.Series([60.07, 60.70, 61.04, 59.50], index=[0, 1, 2, 3])
    with_ = pd.Series([60.30, 60.89, 61.96, 60.10], index=[0, 1, 2, 3])
    test = paired_test(with_, without)
    ci = stats.ttest_rel(with_.to_numpy(), without.to_numpy()).confidence_interval(0.95)
    assert (test.low, test.high) == (pytest.approx(ci.low, rel=1e-12), pytest.approx(ci.high, rel=1e-12))
    # by hand: d = (0.23, 0.19, 0.92, 0.60), mean 0.485, sd 0.34404..., t(0.975, 3) = 3.18245
    d = np.array([0.23, 0.19, 0.92, 0.60])
    assert test.low == pytest.approx(0.485 - 3.182446305 * d.std(ddof=1) / 2, abs=1e-8)
    assert test.high == pytest.approx(0.485 + 3.182446305 * d.std(ddof=1) / 2, abs=1e-8)
    assert math.isnan(paired_test(with_.iloc[:2], without.iloc[:2]).low)  # too few seeds: no interval
    same = paired_test(without + 0.5, without)  # the same difference on every seed: a zero-width interval
    assert (same.low, same.high, same.p) == (pytest.approx(0.5), pytest.approx(0.5), 0.0)


def test_interval_beside_a_difference_over_other_seeds_names_its_own_centre() -> None:
    """Seed 3 ran only without prediction: Δ of all means is -1.25, the matching seeds' interval is +1 ± 0."""
    without = pd.Series([50.0, 51.0, 52.0, 60.0], index=[0, 1, 2, 3])
    with_ = pd.Series([51.0, 52.0, 53.0], index=[0, 1, 2])
    test = paired_test(with_, without)
    diff = with_.mean() - without.mean()
    assert diff == pytest.approx(-1.25) and (test.low, test.high) == (pytest.approx(1.0), pytest.approx(1.0))
    assert diff_cell(diff, test.low, test.high) == "-1.25; matching seeds +1.00 [+1.00, +1.00]"
    assert diff_cell(0.5, 0.2, 0.8) == "+0.50 [+0.20, +0.80]"  # the same seeds: the interval is around Δ
    assert diff_cell(0.5, math.nan, math.nan) == "+0.50"  # no interval


def test_holm_adjustment_exact() -> None:
    # p = (0.01, 0.04, 0.03, 0.005, nan): m = 4; sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005=0.02, 3*0.01=0.03,
    # 2*0.03=0.06, 1*0.04=0.04 -> running max 0.06; NaN is no test.
    adjusted = holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])  # one test: unchanged


def test_table_shows_intervals_and_the_multiplicity_note(report: Path) -> None:
    """PTB's two-horizon table has one test per column; the CIFAR table's SGDM row is the only full test there."""
    table = pd.read_csv(report / "table_cifar10_resnet34.csv")
    row = _row(table, "sgdm")
    without = np.array([GRID[("sgdm", False)][s][-1] for s in range(3)]) * 100
    with_ = np.array([GRID[("sgdm", True)][s][-1] for s in range(3)]) * 100
    ci = stats.ttest_rel(with_, without).confidence_interval()
    assert (row["final_ci_low"], row["final_ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert row["final_n_tests"] == 1 and row["final_p_holm"] == pytest.approx(row["final_p_value"])
    markdown = (report / "table_cifar10_resnet34.md").read_text()
    assert f"{with_.mean() - without.mean():+.2f} [{ci.low:+.2f}, {ci.high:+.2f}]" in markdown
    assert "Holm" not in markdown  # one test per column: nothing to adjust


def test_many_tests_get_holm_p_and_a_note(tmp_path: Path) -> None:
    finals = {  # per optimizer, (without, with) final accuracies of seeds 0-2
        "sgdm": ([0.60, 0.61, 0.62], [0.63, 0.645, 0.65]),
        "adamw": ([0.60, 0.61, 0.62], [0.605, 0.62, 0.622]),
        "adam": ([0.60, 0.61, 0.62], [0.59, 0.615, 0.60]),
    }
    for optimizer, (without, with_) in finals.items():
        for seed in range(3):
            write_run(tmp_path / "runs", optimizer=optimizer, seed=seed, curve=[0.5, without[seed]])
            write_run(tmp_path / "runs", optimizer=optimizer, predict=True, seed=seed, curve=[0.5, with_[seed]])
    assert cli.main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    table = pd.read_csv(tmp_path / "report" / "table_cifar10_resnet34.csv")
    raw = {o: stats.ttest_rel(np.array(w) * 100, np.array(wo) * 100).pvalue for o, (wo, w) in finals.items()}
    expected = dict(zip(raw, holm(list(raw.values()))))
    for optimizer in finals:
        row = _row(table, optimizer)
        assert row["final_n_tests"] == 3
        assert row["final_p_holm"] == pytest.approx(expected[optimizer])
        assert row["final_holds_up"].endswith(f"; Holm p={expected[optimizer]:.3f}")
    survive = sum(p < 0.05 for p in expected.values())
    markdown = (tmp_path / "report" / "table_cifar10_resnet34.md").read_text()
    assert "final: 3 paired tests at once" in markdown and f"{survive} of 3 stay below 0.05" in markdown
    index = (tmp_path / "report" / "README.md").read_text()
    assert "make 6 paired t-tests in all" in index and "about 0.3 verdicts of p < 0.05" in index


def test_split_overrides_keeps_lists_together() -> None:
    assert split_overrides("a=1,scheduler.milestones=[100,150],b='x,y'") == [
        "a=1", "scheduler.milestones=[100,150]", "b='x,y'"]  # fmt: skip


def test_shipped_reference_and_layer_matching() -> None:
    reference = load_reference()
    assert len(reference) == 2 + 12 + 15
    resnet = match_reference(reference, "cifar10", "resnet34", "adabelief", None)
    assert resnet["value"].tolist() == [95.44] and resnet["metric"].tolist() == ["best_test_acc"]
    three = match_reference(reference, "ptb", "awd_lstm", "adam3", 3)
    assert (three["value"].item(), three["std"].item()) == (60.08, 0.11)
    assert match_reference(reference, "ptb", "lstm", "sgd", 1).empty  # Zaremba's small LSTM has 2 layers
    assert match_reference(reference, "ptb", "awd_lstm", "adam", None).empty  # depth unknown: no match
    assert not reference["source"].str.contains("XGrad").any()


def test_duplicate_seed_keeps_the_newest(tmp_path: Path) -> None:
    old = write_run(tmp_path / "a", seed=0, curve=[0.5])
    new = write_run(tmp_path / "b", seed=0, curve=[0.6])
    os.utime(old / "summary.json", (1, 1))
    collection = drop_duplicate_seeds(collect([tmp_path]))
    assert [r.source for r in collection.runs] == [str(new)]
    assert collection.skipped[0].reason.startswith("duplicate")


def test_wandb_runs_are_read_like_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_run(tmp_path / "src", optimizer="adamw", predict=True, seed=3, curve=[0.4, 0.6])
    summary = json.loads((source / "summary.json").read_text())
    history = pd.read_csv(source / "metrics.csv").to_dict("records")

    def fake_run(run_id: str, summary: dict, history: list[dict]) -> SimpleNamespace:
        rows = [{**row, "_step": row["epoch"], "_runtime": 1.0} for row in history]
        return SimpleNamespace(id=run_id, summary=summary, config={"model": {"name": "resnet34"}},
                               scan_history=lambda: iter(rows))  # fmt: skip

    runs = [fake_run("ok", summary, history), fake_run("bad", {**summary, "status": "failed", "error": "x"}, [])]
    api = SimpleNamespace(runs=lambda path: runs if path == "me/proj" else [])
    collection = load_wandb("me/proj", api=api)
    assert [r.source for r in collection.runs] == ["wandb:me/proj/ok"]
    assert list(collection.runs[0].metrics["test_acc"]) == [0.4, 0.6]
    assert collection.skipped[0].source == "wandb:me/proj/bad" and "failed" in collection.skipped[0].reason
    monkeypatch.setattr("xgrad.report.wandb_source._api", lambda: api)
    assert cli.main(["--wandb", "me/proj", "--out", str(tmp_path / "out")]) == 0
    assert "wandb:me/proj/ok" in (tmp_path / "out" / "README.md").read_text()


# ----------------------------------------------------------------------------------- errors and the CLI


def test_empty_or_missing_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main([str(empty), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "no summary.json found" in err
    assert cli.main([str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_only_skipped_runs_exit_1_with_an_index(tmp_path: Path) -> None:
    write_run(tmp_path / "runs", status="failed", error="boom")
    assert cli.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 1
    assert "failed: boom" in (tmp_path / "out" / "README.md").read_text()


def test_real_runs_through_the_cli(tmp_path: Path) -> None:
    """Two tiny runs of the real runner, then ``python -m xgrad.report`` in a subprocess."""
    from xgrad.trainer import train

    summaries = {}
    for predict in ("false", "true"):
        overrides = f"optimizer=sgdm,predict={predict}"
        folder = tmp_path / "runs" / overrides / "seed=0"
        cfg = make_cfg([*TINY, "epochs=2", "optimizer=sgdm", f"predict={predict}", "device=cpu"])
        summaries[predict] = train(cfg, folder, overrides=overrides).summary
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-m", "xgrad.report", str(tmp_path / "runs"), "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "report: 2 runs (0 diverged), 0 skipped" in done.stdout
    row = pd.read_csv(out / "table_demo_images_resnet20.csv").iloc[0]
    assert row["final_without_mean"] == pytest.approx(100 * summaries["false"]["final_test_acc"])
    assert row["best_with_mean"] == pytest.approx(100 * summaries["true"]["best_test_acc"])
    assert row["final_holds_up"] == "too few seeds (n=1) for a test"
    assert matplotlib.image.imread(out / "convergence_demo_images_resnet20.png").ndim == 3
    assert "synthetic data" in (out / "README.md").read_text()
    # the run with prediction measured its prediction error (default sampling): drawn and linked in the index
    assert matplotlib.image.imread(out / "prediction_error_demo_images_resnet20.png").ndim == 3
    assert "(prediction_error_demo_images_resnet20.png)" in (out / "README.md").read_text()


def test_reduced_scale_runs_are_not_compared_with_published_numbers(tmp_path: Path) -> None:
    write_run(tmp_path / "full", optimizer="adabelief", curve=[0.9])
    write_run(tmp_path / "reduced", optimizer="adabelief", curve=[0.5], reduced_scale=True)
    for name, expected in (("full", 95.44), ("reduced", None)):
        frame = with_variants(runs_frame(collect([tmp_path / name]).runs))
        value = comparison(frame, None, load_reference())["ref_value"].item()
        assert value == pytest.approx(expected) if expected else math.isnan(value)


def test_rerun_into_the_same_folder_removes_its_own_stale_files(tmp_path: Path) -> None:
    both, cifar_only = tmp_path / "both", tmp_path / "cifar_only"
    for optimizer, predict in (("sgdm", False), ("sgdm", True)):
        write_run(both, optimizer=optimizer, predict=predict, curve=[0.5, 0.6])
        write_run(cifar_only, optimizer=optimizer, predict=predict, curve=[0.5, 0.6])
        write_run(both, dataset="ptb", model="lstm", optimizer=optimizer, predict=predict, curve=[200.0, 150.0],
                  task="language_model", num_layers=2)  # fmt: skip
    out = tmp_path / "report"
    assert cli.main([str(both), "--out", str(out)]) == 0
    assert list(out.glob("*ptb*.png"))
    (out / "notes.md").write_text("mine")  # added to the report's folder, not the report's: must survive
    assert cli.main([str(cifar_only), "--out", str(out)]) == 0
    assert not list(out.glob("*ptb*")) and list(out.glob("*cifar10*.png"))
    assert (out / "notes.md").read_text() == "mine"


def test_out_refuses_a_folder_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--out .`` in a project overwrote its README.md; a folder without the report's manifest is refused."""
    runs = tmp_path / "runs"
    write_run(runs, curve=[0.5])
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my project")
    assert cli.main([str(runs), "--out", str(project)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not written by xgrad.report" in err
    assert [p.name for p in project.iterdir()] == ["README.md"] and (project / "README.md").read_text() == "my project"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main([str(runs), "--out", str(empty)]) == 0  # an empty folder becomes the report's
    assert (empty / ".xgrad-report-files").exists() and cli.main([str(runs), "--out", str(empty)]) == 0


def test_out_never_replaces_a_file_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    write_run(runs, curve=[0.5])
    out = tmp_path / "out"
    assert cli.main([str(runs), "--out", str(out)]) == 0
    (out / "cost.csv").unlink(missing_ok=True)
    (out / "runs.csv").write_text("mine")  # the report's name, but a file the user wrote since: the manifest has it
    (out / ".xgrad-report-files").write_text("README.md\n")  # say the earlier report wrote only its index
    capsys.readouterr()
    assert cli.main([str(runs), "--out", str(out)]) == 2
    assert "runs.csv" in capsys.readouterr().err and (out / "runs.csv").read_text() == "mine"
    assert not list(out.glob(".xgrad-report-*.tmp"))  # the staged files are gone


@pytest.mark.parametrize("kind", ["file", "under_a_file"])
def test_out_that_is_a_file_or_unwritable_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, kind) -> None:
    runs = tmp_path / "runs"
    write_run(runs, curve=[0.5])
    target = tmp_path / "a_file"
    target.write_text("x")
    out = target if kind == "file" else target / "report"
    assert cli.main([str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: --out {out}") and target.read_text() == "x"


def test_seeds_group_and_runs_pair_by_identity(tmp_path: Path) -> None:
    """Spellings of one configuration are one group; one spelling of two configurations is two."""
    ids = {"config_id": "c1", "pair_id": "p1"}
    a = write_run(tmp_path / "a", seed=0, curve=[0.5], **ids)
    b = write_run(tmp_path / "b", seed=1, curve=[0.6], **ids, overrides="optimizer=sgdm,optimizer.lr=0.1")
    frame = runs_frame(collect([a, b]).runs)
    assert frame["group"].nunique() == 1
    edited = write_run(tmp_path / "c", seed=1, curve=[0.7], config_id="c2", pair_id="p2")  # same overrides
    frame = runs_frame(drop_duplicate_seeds(collect([a, edited])).runs)
    assert len(frame) == 2 and frame["group"].nunique() == 2
    assert [e for e in frame["extra"] if any(x.startswith("config ") for x in e)]  # told apart by their hashes
    # other optimizers (or settings) are other identities with the same overrides: no hash is needed there
    other = write_run(tmp_path / "d", optimizer="nadam", curve=[0.7], config_id="c3", pair_id="p3")
    frame = runs_frame(collect([a, other]).runs)
    assert frame["extra"].tolist() == [(), ()]


def test_seeds_recorded_under_an_older_identity_group_with_the_new_ones(tmp_path: Path) -> None:
    """A summary's ids are those of the version that ran it (seed 0 when the identity held the presets' tables);
    the report takes them from the run's config.yaml as identity is defined now, so the seeds stay one group."""
    config = {"optimizer": {"name": "adam", "lr": 0.001}, "dataset": {"name": "cifar10"}, "epochs": 3, "seed": 0}
    old = write_run(tmp_path / "a", optimizer="adam", seed=0, config_id="with-tables", pair_id="with-tables-p")
    new = write_run(tmp_path / "b", optimizer="adam", seed=1, config_id="now", pair_id="now-p")
    (old / "config.yaml").write_text(yaml.safe_dump({**config, "lr_table": {"adam": 0.001, "sgdm": 2.0}}))
    (new / "config.yaml").write_text(yaml.safe_dump({**config, "seed": 1}))
    frame = runs_frame(collect([old, new]).runs)
    assert frame["group"].nunique() == 1 and frame["extra"].tolist() == [(), ()]
    (new / "config.yaml").write_text(yaml.safe_dump({**config, "seed": 1, "epochs": 4}))
    assert runs_frame(collect([old, new]).runs)["group"].nunique() == 2
    # a config.yaml that is not this run's (no mapping, another optimizer) leaves the summary's ids alone
    for text in ("[1, 2]\n", "", yaml.safe_dump({**config, "optimizer": {"name": "sgdm", "lr": 0.1}})):
        (new / "config.yaml").write_text(text)
        assert read_folder(new).summary["config_id"] == "now"


def test_a_run_read_from_its_folder_and_from_wandb_is_one_run(tmp_path: Path) -> None:
    """Both sources derive the ids anew from the resolved configuration, so the two copies stay duplicates."""
    config = {"optimizer": {"name": "adam", "lr": 0.001}, "dataset": {"name": "cifar10"}, "epochs": 3, "seed": 0}
    folder = write_run(tmp_path, optimizer="adam", config_id="with-tables", pair_id="with-tables-p")
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "lr_table": {"adam": 0.001}}))
    local = read_folder(folder)
    summary = json.loads((folder / "summary.json").read_text())
    rows = [{**row, "_step": row["epoch"]} for row in pd.read_csv(folder / "metrics.csv").to_dict("records")]
    logged = SimpleNamespace(id="x", summary=summary, config={**config, "_wandb": {"v": 1}},
                             scan_history=lambda: iter(rows))  # fmt: skip
    (remote,) = load_wandb("me/p", api=SimpleNamespace(runs=lambda path: [logged])).runs
    assert local.summary["config_id"] == remote.summary["config_id"] != "with-tables"
    assert len(drop_duplicate_seeds(Collection(runs=[local, remote])).runs) == 1


def test_results_table_gives_each_optimizer_its_verdict(report: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("results_table", ROOT / "scripts" / "results_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text = script.results_table([report], base=report.parent)
    lines = text.splitlines()
    link = f"({report.name}/README.md)"
    columns = [
        f"[CIFAR-10 ResNet-34, s=1]{link}",
        f"[Penn Treebank LSTM, s=1]{link}",
        f"[Penn Treebank LSTM, s=2]{link}",
    ]
    assert lines[0] == "| optimizer | " + " | ".join(columns) + " |"
    sgdm = next(line for line in lines if line.startswith("| SGDM |"))
    assert sgdm.startswith("| SGDM | helped: +1.23 [+0.09, +2.38] pp |")  # differences 1.5, 0.7, 1.5 points
    assert sgdm.endswith("| not run | not run |")
    adamw = next(line for line in lines if line.startswith("| AdamW |"))
    assert "too few seeds: +2.00 pp" in adamw
    only = script.results_table([report], base=report.parent, steps=[2.0]).splitlines()
    # only Adam ran s=2: SGD, without prediction only, is no row (it read "too few seeds: —" before)
    assert only[0] == f"| optimizer | {columns[2]} |" and len(only) == 3 and only[2].startswith("| Adam | ")
    one = script.results_table([report], base=report.parent, optimizers=["sgdm"]).splitlines()
    assert one[0] == f"| optimizer | {columns[0]} |" and one[2:] == ["| SGDM | helped: +1.23 [+0.09, +2.38] pp |"]
    with pytest.raises(SystemExit, match=r"--steps 3: no report has it \(horizons s: 1, 2; optimizers: adam, "):
        script.results_table([report], base=report.parent, steps=[3.0])
    with pytest.raises(SystemExit, match=r"--optimizers nadam: no report has it \(optimizers: adam, adamw, sgdm"):
        script.results_table([report], base=report.parent, optimizers=["nadam"])
    with pytest.raises(SystemExit, match=r"--steps 2 --optimizers sgdm: no report has it"):
        script.results_table([report], base=report.parent, steps=[2.0], optimizers=["sgdm"])
    with pytest.raises(SystemExit, match=r"has no table_\*\.csv \(not a report folder"):
        script.results_table([tmp_path], base=tmp_path)  # 87.5 (2 seeds; one diverged) - 85.5


def test_verdict_follows_the_paired_seeds_not_the_unpaired_means(tmp_path: Path) -> None:
    """Without prediction has a 4th seed far above the rest; the 3 paired seeds all improve with prediction."""
    from xgrad.report.tables import comparison

    for seed, final in enumerate([0.50, 0.50, 0.50, 0.90]):
        write_run(tmp_path, optimizer="sgdm", seed=seed, curve=[0.3, final])
    for seed, final in enumerate([0.52, 0.53, 0.515]):
        write_run(tmp_path, optimizer="sgdm", predict=True, seed=seed, curve=[0.3, final])
    write_run(tmp_path, optimizer="sgdm", predict=True, seed=3, curve=[0.3, float("nan")], status="diverged")
    collection = collect([tmp_path])
    row = comparison(with_variants(runs_frame(collection.runs)), 1.0).iloc[0]
    assert row["final_diff"] == pytest.approx(52.1667 - 60.0, abs=1e-3)  # unpaired means: lower with prediction
    assert row["final_p_value"] == pytest.approx(stats.ttest_rel([52, 53, 51.5], [50, 50, 50]).pvalue)  # 0.039
    assert row["final_verdict"] == "helped; 1 more seed(s) diverged with prediction"


def test_provenance_names_each_commit_a_resumed_run_ran_under() -> None:
    from xgrad.report.build import _provenance

    runs = [SimpleNamespace(summary={"git_commit": "b" * 40, "git_commits": ["a" * 40, "b" * 40], "seed": 0}),
            SimpleNamespace(summary={"git_commit": "b" * 40, "git_commits": ["b" * 40], "seed": 1}),
            SimpleNamespace(summary={"git_commit": "b" * 40, "seed": 2})]  # fmt: skip
    line = _provenance(SimpleNamespace(runs=runs))[0]
    assert f"code at commit {'b' * 7} (2 runs), {'a' * 7} then {'b' * 7} (1 run);" in line


def test_two_prediction_methods_from_one_baseline_are_two_rows(tmp_path: Path) -> None:
    """The optimizer's rule and extrapolation at the same s share the baseline's pair_id: they were averaged as one
    row (6 "with" seeds, 3 per seed number); now each is its own row, compared with the shared baseline."""
    finals = {"none": [0.50, 0.52, 0.51], "rule": [0.55, 0.56, 0.57], "extrapolate": [0.40, 0.41, 0.42]}
    folders = []
    for method, values in finals.items():
        for seed, value in enumerate(values):
            predict = method != "none"
            overrides = "optimizer=adamw" + (",predict=true" if predict else "")
            overrides += ",predict_method=extrapolate" if method == "extrapolate" else ""
            folders.append(write_run(
                tmp_path / method, optimizer="adamw", predict=predict, seed=seed, curve=[value], overrides=overrides,
                pair_id="p", config_id=f"c-{method}", predict_method=None if method == "none" else method,
            ))  # fmt: skip
    sub = with_variants(runs_frame(collect(folders).runs))
    table = comparison(sub, 1.0).set_index("variant")
    assert list(table.index) == ["", "predict_method=extrapolate"]  # the rule, reached by default, keeps the name
    assert "predict_method=extrapolate" in sub.loc[sub["variant"] != "", "group"].iloc[0]
    assert table.loc["", "n_with"] == 3 and table.loc["predict_method=extrapolate", "n_with"] == 3
    assert table.loc["", "n_without"] == table.loc["predict_method=extrapolate", "n_without"] == 3
    assert table.loc["", "final_diff"] == pytest.approx(5.0)  # percent: 0.56 - 0.51
    assert table.loc["predict_method=extrapolate", "final_diff"] == pytest.approx(-10.0)  # 0.41 - 0.51
    assert table.loc["predict_method=extrapolate", "final_n_paired"] == 3
    # the rule named in its overrides too: still AdamW's default (its registry entry), so still the plain row
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        if summary["predict"] and "predict_method" not in summary["overrides"]:
            summary["overrides"] += ",predict_method=rule"
            (folder / "summary.json").write_text(json.dumps(summary))
    table = comparison(with_variants(runs_frame(collect(folders).runs)), 1.0).set_index("variant")
    assert list(table.index) == ["", "predict_method=extrapolate"] and (table["n_with"] == 3).all()
    # extrapolation alone still says so, beside its baseline (which is then no row of its own)
    alone = [f for f in folders if not f.is_relative_to(tmp_path / "rule")]
    table = comparison(with_variants(runs_frame(collect(alone).runs)), 1.0).set_index("variant")
    assert list(table.index) == ["predict_method=extrapolate"] and table["final_n_paired"].tolist() == [3]
    # an optimizer the registry does not know: the way its runs without such overrides predicted is the plain one
    other = []
    for method in ("none", "rule", "extrapolate"):
        for seed in range(3):
            overrides = "optimizer=mine" + (",predict=true" if method != "none" else "")
            overrides += ",predict_method=extrapolate" if method == "extrapolate" else ""
            other.append(write_run(
                tmp_path / "mine" / method, optimizer="mine", predict=method != "none", seed=seed, curve=[0.5],
                overrides=overrides, pair_id="q", config_id=f"m-{method}",
                predict_method=None if method == "none" else method,
            ))  # fmt: skip
    table = comparison(with_variants(runs_frame(collect(other).runs)), 1.0).set_index("variant")
    assert list(table.index) == ["", "predict_method=extrapolate"] and (table["n_without"] == 3).all()


def test_one_computation_spelled_two_ways_is_one_seed(tmp_path: Path) -> None:
    """predict_method=auto and =rule (AdamW: the rule), or another prediction_error_every, are other config_ids
    but the same numbers: one seed each (the newer), not two seeds of one number each (the report crashed)."""
    folders = []
    for name, overrides, predict in (
        ("none", "optimizer=adamw", False),
        ("auto", "optimizer=adamw,predict=true", True),
        ("rule", "optimizer=adamw,predict=true,predict_method=rule", True),
        ("quiet", "optimizer=adamw,predict=true,prediction_error_every=0", True),
    ):
        for seed in range(3):
            folders.append(write_run(
                tmp_path / name, optimizer="adamw", predict=predict, seed=seed, curve=[0.5 + 0.01 * seed],
                overrides=overrides, pair_id="p", config_id=f"c-{name}", predict_method="rule" if predict else None,
            ))  # fmt: skip
    collection = drop_duplicate_seeds(collect(folders))
    assert len(collection.runs) == 6 and len(collection.skipped) == 6
    assert all("duplicate: seed" in s.reason for s in collection.skipped)
    table = comparison(with_variants(runs_frame(collection.runs)), 1.0)
    assert table["variant"].tolist() == [""] and table.loc[0, "n_with"] == 3 and table.loc[0, "final_n_paired"] == 3


def test_a_prediction_setting_only_the_config_records_names_its_row(tmp_path: Path) -> None:
    """predict_weight_decay=true (in config.yaml, not in the summary) beside the default: two rows."""
    folders = []
    for name, predict in (("none", False), ("plain", True), ("decay", True)):
        for seed in range(3):
            overrides = "optimizer=adamw" + (",predict=true" if predict else "")
            overrides += ",predict_weight_decay=true" if name == "decay" else ""
            folder = write_run(tmp_path / name, optimizer="adamw", predict=predict, seed=seed, curve=[0.5],
                               overrides=overrides, pair_id="p", config_id=f"c-{name}")  # fmt: skip
            config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
            if name == "decay":
                config["predict_weight_decay"] = True
            (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
            folders.append(folder)
    table = comparison(with_variants(runs_frame(collect(folders).runs)), 1.0).set_index("variant")
    assert list(table.index) == ["", "predict_weight_decay=true"] and (table["n_without"] == 3).all()


def test_rows_borrow_a_baseline_only_for_another_way_of_predicting() -> None:
    """A row of predicted runs alone (another variant: an lr tuned elsewhere) is not given a baseline of another
    row that shares its pair_id; a row that only predicted differently is given its own row's baseline."""
    from xgrad.report.tables import row_groups

    def rows(variant: str, base: str, predict: bool, n: int = 2) -> list[dict]:
        return [{"optimizer": "adamw", "variant": variant, "base_variant": base, "predict": predict, "steps": 1.0,
                 "pair_id": "p", "seed": seed} for seed in range(n)]  # fmt: skip

    sub = pd.DataFrame([*rows("", "", False), *rows("lr tuned: x", "lr tuned: x", True),
                        *rows("predict_method=extrapolate", "", True)])  # fmt: skip
    groups = {variant: runs for (_, variant), runs in row_groups(sub)}
    assert set(groups) == {"lr tuned: x", "predict_method=extrapolate"}  # the baseline's own row: all shared
    assert not (~groups["lr tuned: x"]["predict"]).any()
    assert (~groups["predict_method=extrapolate"]["predict"]).sum() == 2


def test_equal_runs_count_once_within_a_study_and_the_measuring_one_is_kept(tmp_path: Path) -> None:
    """The second dedupe pass (same computation, other config_id) stays inside one scope (a tuning study's folder):
    two studies' equal baselines both stay; among equals it keeps the run that measured the prediction error."""
    a = write_run(tmp_path / "study_a", optimizer="adamw", curve=[0.5], pair_id="p", config_id="ca")
    b = write_run(tmp_path / "study_b", optimizer="adamw", curve=[0.5], pair_id="p", config_id="cb",
                  overrides="optimizer=adamw,predict=false,predict_method=extrapolate")  # fmt: skip
    assert len(drop_duplicate_seeds(collect([a, b])).runs) == 1
    kept = drop_duplicate_seeds(collect([a, b]), scopes=[tmp_path / "study_a", tmp_path / "study_b"])
    assert len(kept.runs) == 2 and not kept.skipped

    measured = write_run(tmp_path / "m", optimizer="adamw", predict=True, curve=[0.5], pair_id="p", config_id="m")
    metrics = pd.read_csv(measured / "metrics.csv").assign(prediction_error=0.3, prediction_cosine=0.9)
    metrics.to_csv(measured / "metrics.csv", index=False)
    quiet = write_run(tmp_path / "q", optimizer="adamw", predict=True, curve=[0.5], pair_id="p", config_id="q",
                      overrides="optimizer=adamw,predict=true,prediction_error_every=0")  # fmt: skip
    os.utime(quiet / "summary.json", (time.time() + 60, time.time() + 60))  # the newer one
    kept = drop_duplicate_seeds(collect([measured, quiet]))
    assert [r.source for r in kept.runs] == [str(measured)]
    assert "measured the prediction error" in kept.skipped[0].reason


def test_a_folder_without_its_config_takes_how_it_predicted_from_its_overrides(tmp_path: Path) -> None:
    plain = write_run(tmp_path / "plain", optimizer="adamw", predict=True, curve=[0.5], pair_id="p", config_id="a")
    decay = write_run(tmp_path / "decay", optimizer="adamw", predict=True, curve=[0.6], pair_id="p", config_id="b",
                      overrides="optimizer=adamw,predict=true,predict_weight_decay=true")  # fmt: skip
    shutil.rmtree(decay / ".hydra")
    kept = drop_duplicate_seeds(collect([plain, decay]))
    assert len(kept.runs) == 2  # not one computation: the decay is in its overrides
    assert sorted(runs_frame(kept.runs)["flavour"]) == [(), ("predict_weight_decay=true",)]
