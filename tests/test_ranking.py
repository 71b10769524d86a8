"""Ranking stability in the report: Kendall's tau between epochs and seeds, from hand-computed numbers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.test_report import write_run
from xgrad.report import cli
from xgrad.report.build import with_variants
from xgrad.report.collect import collect, runs_frame
from xgrad.report.ranking import kendall_tau, ranking_stability


def _series(order: list[str]) -> pd.Series:
    """Scores that rank ``order`` best first."""
    return pd.Series({item: float(len(order) - i) for i, item in enumerate(order)})


def test_kendall_tau_counts_discordant_pairs() -> None:
    base = _series(list("abcde"))
    assert kendall_tau(base, base) == pytest.approx(1.0)
    assert kendall_tau(base, _series(list("edcba"))) == pytest.approx(-1.0)
    assert kendall_tau(base, _series(list("abced"))) == pytest.approx(0.8)  # 10 pairs, 1 discordant: (9 - 1) / 10
    assert kendall_tau(base, _series(list("bacde")).drop("e")) == pytest.approx(4 / 6)  # common items only
    assert pd.isna(kendall_tau(base, _series(list("ab"))))  # fewer than 3 in common: no ranking to compare


# Test accuracy per epoch: the last epoch orders a > b > c > d in both seeds; epoch 2 (seed mean) swaps c and d,
# epoch 1 is the reverse order. Seed 1 swaps a and b at the last epoch.
CURVES = {
    "sgdm": {0: [0.10, 0.70, 0.80], 1: [0.10, 0.60, 0.69]},
    "adam": {0: [0.20, 0.60, 0.70], 1: [0.20, 0.60, 0.71]},
    "adamw": {0: [0.30, 0.40, 0.60], 1: [0.30, 0.40, 0.60]},
    "adabelief": {0: [0.40, 0.50, 0.50], 1: [0.40, 0.50, 0.50]},
}


def test_ranking_between_epochs_and_seeds(tmp_path: Path) -> None:
    for optimizer, seeds in CURVES.items():
        for seed, curve in seeds.items():
            write_run(tmp_path, optimizer=optimizer, seed=seed, curve=curve)
    collection = collect([tmp_path])
    sub = with_variants(runs_frame(collection.runs))
    numbers = ranking_stability(collection.runs, sub)
    assert len(numbers) == 1  # no prediction runs: one arm
    row = numbers.iloc[0]
    # last epoch seed means: sgdm 0.745, adam 0.705, adamw 0.60, adabelief 0.50
    assert row["order"] == "SGDM > Adam > AdamW > AdaBelief"
    assert row["tau_epoch_1"] == pytest.approx(-1.0)
    # epoch 2 means: sgdm 0.65, adam 0.60, adabelief 0.50, adamw 0.40: one of 6 pairs discordant
    assert row["tau_epoch_2"] == pytest.approx((5 - 1) / 6)
    assert row["tau_seeds_mean"] == pytest.approx(4 / 6) and row["tau_seeds_min"] == pytest.approx(4 / 6)
    assert (row["epochs"], row["seeds"]) == (3, 2)


def test_perplexity_ranks_lowest_first_and_arms_apart(tmp_path: Path) -> None:
    for i, optimizer in enumerate(["sgdm", "adam", "adamw"]):
        for predict in (False, True):
            curve = [300.0, 200.0 - 10 * i, 150.0 - 10 * i - 5 * predict]
            write_run(tmp_path, dataset="ptb", model="lstm", optimizer=optimizer, predict=predict, curve=curve,
                      task="language_model")  # fmt: skip
    collection = collect([tmp_path])
    numbers = ranking_stability(collection.runs, with_variants(runs_frame(collection.runs)))
    assert numbers["steps"].tolist() == [0.0, 1.0]
    assert numbers["order"].tolist() == ["AdamW > Adam > SGDM"] * 2
    assert numbers["tau_epoch_2"].tolist() == pytest.approx([1.0, 1.0])
    assert numbers["tau_epoch_1"].isna().all()  # epoch 1 ties everywhere: no ranking
    assert cli.main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    index = (tmp_path / "report" / "README.md").read_text()
    assert "Statistics use completed seeds" in index and "Accuracies" not in index  # perplexities only


def test_report_writes_and_links_the_ranking_table(tmp_path: Path) -> None:
    for optimizer, seeds in CURVES.items():
        for seed, curve in seeds.items():
            write_run(tmp_path / "runs", optimizer=optimizer, seed=seed, curve=curve)
    out = tmp_path / "report"
    assert cli.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    table = pd.read_csv(next(out.glob("ranking_*.csv")))
    assert table["tau_epoch_2"].iloc[0] == pytest.approx(4 / 6)
    index = (out / "README.md").read_text()
    assert "ranking stability of the optimizers" in index and "SGDM > Adam > AdamW > AdaBelief" in index
