"""python -m xgrad.tune: the lr selection rules with exact numbers, run folders read back, bad input, end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT
from xgrad.errors import ConfigError
from xgrad.report import cli
from xgrad.tune import (
    Arm,
    GridPoint,
    Study,
    _grouped,
    fill_grid,
    grid_lrs,
    merge,
    next_lr,
    parse_args,
    plan_study,
    select_lr,
    widen,
    write_study,
)

# ----------------------------------------------------------------------------------- selection rules


def point(lr: float, *values: float | None, missing: tuple[int, ...] = ()) -> GridPoint:
    return GridPoint(lr, dict(enumerate(values)), list(missing))


def test_best_mean_validation_wins() -> None:
    grid = [point(0.01, 0.50, 0.54), point(0.03, 0.60, 0.58), point(0.1, 0.61, 0.55)]  # means .52, .59, .58
    chosen = select_lr(grid, preset_lr=0.03, higher_is_better=True)
    assert chosen.lr == 0.03 and not chosen.at_edge


def test_lower_is_better_for_perplexity() -> None:
    grid = [point(1e-3, 120.0, 124.0), point(3e-3, 118.0, 119.0), point(1e-2, 117.0, 130.0)]  # 122, 118.5, 123.5
    assert select_lr(grid, preset_lr=1e-3, higher_is_better=False).lr == 3e-3
    assert select_lr(grid, preset_lr=1e-3, higher_is_better=True).lr == 1e-2  # the same numbers, accuracy-like


def test_a_diverged_seed_rules_its_lr_out() -> None:
    """lr 0.3 has the best finite seed (0.70) but its other seed diverged: never chosen."""
    grid = [point(0.03, 0.50, 0.52), point(0.1, 0.60, 0.61), point(0.3, 0.70, None)]
    chosen = select_lr(grid, preset_lr=0.1, higher_is_better=True)
    assert chosen.lr == 0.1 and "diverged at lr 0.3" in chosen.reason
    nan = [point(0.1, 0.60), point(0.3, math.nan)]  # a non-finite value counts as diverged too
    assert select_lr(nan, preset_lr=0.1, higher_is_better=True).lr == 0.1


def test_every_lr_diverged_chooses_nothing() -> None:
    chosen = select_lr([point(0.1, None), point(0.3, None)], preset_lr=0.1, higher_is_better=True)
    assert chosen.lr is None and "every lr" in chosen.reason


def test_ties_go_to_the_preset_then_to_the_smaller_lr() -> None:
    tie = [point(0.01, 0.5), point(0.03, 0.6), point(0.09, 0.6)]  # 0.03 and 0.09 tie; preset 0.05
    # |log(0.03/0.05)| = 0.511 < |log(0.09/0.05)| = 0.588
    assert select_lr(tie, preset_lr=0.05, higher_is_better=True).lr == 0.03
    symmetric = [point(0.01, 0.6), point(0.1, 0.6), point(1.0, 0.6)]  # all tie: the preset itself
    assert select_lr(symmetric, preset_lr=0.1, higher_is_better=True).lr == 0.1
    both_sides = [point(0.05, 0.6), point(0.2, 0.6)]  # equally far from 0.1 on a log scale: the smaller
    assert select_lr(both_sides, preset_lr=0.1, higher_is_better=True).lr == 0.05
    # the default grid around 0.1 is 0.0333, 0.1, 0.3: rounding puts 0.3 nearer (1.0986 < 1.0996), yet x1/3 and x3
    # are equally far, so their tie goes to the smaller lr
    for preset in (0.1, 1e-3, 0.02):
        lrs = grid_lrs(preset, [1 / 3, 1, 3])
        rounded = [point(lrs[0], 0.6), point(lrs[1], 0.5), point(lrs[2], 0.6)]
        assert select_lr(rounded, preset_lr=preset, higher_is_better=True).lr == lrs[0]
    near = [point(0.01, 0.6 + 1e-12), point(0.1, 0.6)]  # within 1e-9 relative: a tie, the preset wins
    assert select_lr(near, preset_lr=0.1, higher_is_better=True).lr == 0.1


def test_an_unfinished_grid_decides_nothing_and_edges_are_flagged() -> None:
    unfinished = [point(0.1, 0.6), point(0.3, missing=(0,))]
    chosen = select_lr(unfinished, preset_lr=0.1, higher_is_better=True)
    assert chosen.lr is None and "lr=0.3 seed 0" in chosen.reason
    edge = select_lr([point(0.03, 0.5), point(0.1, 0.6), point(0.3, 0.7)], preset_lr=0.1, higher_is_better=True)
    assert edge.lr == 0.3 and edge.at_edge


def test_grid_is_the_preset_times_the_factors() -> None:
    assert grid_lrs(0.1, [1 / 3, 1, 3]) == [0.0333, 0.1, 0.3]
    assert grid_lrs(1e-3, [3, 1, 1 / 3, 1.0]) == [0.000333, 0.001, 0.003]


def _chosen(optimizer: str, steps: float, preset: float, lrs: list[float], lr: float, at_edge: bool) -> Arm:
    from xgrad.tune import Selection

    return Arm(optimizer, steps, preset, lrs, selection=Selection(lr, "test", at_edge))


def test_the_grid_widens_past_an_edge_choice_within_extend() -> None:
    assert next_lr([0.0333, 0.1, 0.3], upwards=True) == 0.9  # the edge's own ratio (x3), three digits
    assert next_lr([0.0333, 0.1, 0.3], upwards=False) == 0.0111
    assert next_lr([0.1, 1.0], upwards=True) == 10.0
    base = [0.000333, 0.001, 0.003]
    arms = [
        _chosen("adam", 0.0, 0.001, base, 0.003, True),  # top edge: widen upwards
        _chosen("adam", 1.0, 0.001, base, 0.001, False),  # inside: nothing
        _chosen("adamw", 0.0, 0.001, [*base, 0.009, 0.027], 0.027, True),  # two added above already: spent
        _chosen("sgdm", 0.0, 0.1, [0.0111, 0.0333, 0.1, 0.3], 0.0111, True),  # one added below: one more
        Arm("adamw", 1.0, 0.001, base),  # not decided yet: nothing
    ]
    study = Study([], [1 / 3, 1, 3], [0], [0, 1, 2], "acc", "final_val_acc", arms, extend=2)
    points = widen(study)
    assert [(a.optimizer, a.steps, lr) for a, lr in points] == [("adam", 0.0, 0.009), ("sgdm", 0.0, 0.0037)]
    assert widen(dataclasses.replace(study, extend=0)) == []


def test_widened_points_share_multiruns_without_extra_runs() -> None:
    arm = {(o, s): Arm(o, s, 0.001, []) for o in ("adam", "adamw", "sgdm") for s in (0.0, 1.0, 2.0)}
    points = [(arm["adam", 0.0], 0.009), (arm["adam", 1.0], 0.009), (arm["adamw", 0.0], 0.009),
              (arm["adamw", 1.0], 0.009), (arm["sgdm", 0.0], 0.0111), (arm["adamw", 2.0], 0.027)]  # fmt: skip
    assert _grouped(points, [0]) == [
        ["optimizer=adam,adamw", "optimizer.lr=0.009", "seed=0", "predict=false,true"],
        ["optimizer=sgdm", "optimizer.lr=0.0111", "seed=0", "predict=false"],
        ["optimizer=adamw", "optimizer.lr=0.027", "seed=0", "predict=true", "predict_steps=2"],
    ]


def test_a_relaunch_keeps_the_lrs_a_grid_was_widened_by(capsys: pytest.CaptureFixture) -> None:
    from xgrad.tune import tune_phase

    base = [0.000333, 0.001, 0.003]
    before = Study([], [1 / 3, 1, 3], [0], [0], "acc", "final_val_acc", [Arm("adam", 0.0, 0.001, [*base, 0.009])])
    arms = [Arm("adam", 0.0, 0.001, list(base)), Arm("adam", 1.0, 0.001, list(base))]
    now = merge(before, Study([], [1, 3], [0], [0], "acc", "final_val_acc", arms))
    assert now.arms[0].lrs == [*base, 0.009] and now.arms[1].lrs == base
    assert now.factors == [1 / 3, 1, 3]  # factors of both launches: 1/3 is planned, not a widened lr
    tune_phase(now, Path("study"), [], dry=True)  # the widened arm relaunches its own grid, the other arm its own
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" optimizer.lr=")[1] for line in lines] == [
        "0.000333,0.001,0.003,0.009 seed=0 predict=false hydra.sweep.dir=study",
        "0.000333,0.001,0.003 seed=0 predict=true hydra.sweep.dir=study",
    ]


def test_a_grid_finer_than_three_digits_stops_widening() -> None:
    arm = _chosen("adam", 0.0, 0.1, [0.0999, 0.1], 0.1, True)
    assert next_lr(arm.lrs, upwards=True) == 0.1  # already in the grid: widening would repeat it forever
    assert widen(Study([], [0.999, 1], [0], [0], "acc", "final_val_acc", [arm], extend=2)) == []


# ----------------------------------------------------------------------------------- run folders


def fake_run(root: Path, optimizer: str, steps: float, lr: float, seed: int, val: float | None, **extra) -> None:
    """A finished run folder as the runner writes it (only what the tuning reads)."""
    folder = root / f"{optimizer},s={steps:g},lr={lr:g}" / f"seed={seed}"
    folder.mkdir(parents=True)
    status = extra.pop("status", "completed" if val is not None else "diverged")
    summary = {
        "schema_version": 1, "status": status, "task": "language_model", "dataset": "ptb", "model": "lstm",
        "optimizer": optimizer, "predict": steps > 0, "predict_steps": float(steps), "seed": seed,
        "overrides": f"optimizer={optimizer},optimizer.lr={lr:g}", "config_id": f"{optimizer}-{steps:g}-{lr:g}",
        "pair_id": f"{optimizer}-{lr:g}",
        "epochs": 1, "epochs_done": 1, "final_test_ppl": 100.0, "best_test_ppl": 100.0, "final_val_ppl": val, **extra,
    }  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    row = {"epoch": 1, "train_loss": 4.0, "test_ppl": 100.0, "val_ppl": val if val is not None else float("nan")}
    pd.DataFrame([row]).to_csv(folder / "metrics.csv", index=False)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimizer": {"name": optimizer, "lr": lr}}))


def test_selection_from_run_folders(tmp_path: Path) -> None:
    """Perplexity (lower is better) over 2 tune seeds; a diverged run, a failed run and a run of another seed."""
    lrs = [0.000333, 0.001, 0.003]
    arms = [Arm("adam", 0.0, 0.001, lrs), Arm("adam", 1.0, 0.001, lrs), Arm("sgdm", 0.0, 1.0, [0.333, 1.0, 3.0])]
    study = Study([], [1 / 3, 1, 3], [0, 1], [0, 1, 2], "ppl", "final_val_ppl", arms)
    vals = {  # (steps, lr): (seed 0, seed 1)
        (0, 0.000333): (150.0, 152.0), (0, 0.001): (140.0, 146.0), (0, 0.003): (139.0, 145.0),  # 151, 143, 142
        (1, 0.000333): (149.0, 149.0), (1, 0.001): (138.0, 140.0), (1, 0.003): (120.0, None),  # 149, 139, diverged
    }  # fmt: skip
    for (steps, lr), values in vals.items():
        for seed, val in enumerate(values):
            fake_run(tmp_path, "adam", steps, lr, seed, val)
    fake_run(tmp_path, "adam", 0, 0.001, 2, 10.0)  # a final seed: not a tune seed, ignored by the selection
    for lr in (0.333, 1.0, 3.0):
        fake_run(tmp_path, "sgdm", 0, lr, 0, 200.0)
        fake_run(tmp_path, "sgdm", 0, lr, 1, 200.0, status="failed" if lr == 3.0 else "completed")
    fill_grid(study, tmp_path)
    off, on, sgdm = study.arms
    assert [p.mean for p in off.grid] == pytest.approx([151.0, 143.0, 142.0])
    assert (off.selection.lr, off.selection.at_edge) == (0.003, True)
    assert on.grid[2].diverged and on.selection.lr == 0.001 and "diverged at lr 0.003" in on.selection.reason
    assert sgdm.selection.lr is None and "lr=3 seed 1" in sgdm.selection.reason  # a failed run: grid not finished

    write_study(tmp_path, study)  # the report of this study: chosen lrs in bold, the rest left out of the comparison
    assert cli.main([str(tmp_path), "--out", str(tmp_path.parent / "report")]) == 0
    tuning = (tmp_path.parent / "report" / f"tuning_{tmp_path.name}.md").read_text()
    off_row = "| Adam, without prediction | 0.001 | 151.00 (lr 0.000333) | 143.00 (lr 0.001) | **142.00 (lr 0.003)** |"
    assert off_row in tuning
    assert "| Adam, with prediction (s=1) | 0.001 | 149.00 (lr 0.000333) | **139.00 (lr 0.001)** | diverged |" in tuning
    assert "| SGDM, without prediction | 1 | 200.00 (lr 0.333) | 200.00 (lr 1) | not run | none |" in tuning
    runs = pd.read_csv(tmp_path.parent / "report" / "runs.csv")
    assert sorted(zip(runs["predict"], runs["seed"])) == [(False, 0), (False, 1), (True, 0), (True, 1)]  # Adam's
    table = pd.read_csv(tmp_path.parent / "report" / "table_ptb_lstm.csv")  # one row: paired, though lrs differ
    assert list(table["optimizer"]) == ["adam"] and table["final_n_paired"].iloc[0] == 2


def test_bad_arguments_are_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"factors=\[0, 1\].*lr multiples > 0"):
        parse_args(["factors=[0,1]"])
    with pytest.raises(ConfigError, match=r"steps=.*listed twice"):
        parse_args(["steps=[0,1,1]"])
    with pytest.raises(ConfigError, match=r"phase='later'.*tune, final, all, plan"):
        parse_args(["phase=later"])
    with pytest.raises(ConfigError, match=r"extend=-1: accepted an integer >= 0"):
        parse_args(["extend=-1"])
    with pytest.raises(ConfigError, match=r"'optimizer.lr=0.1'.*factors="):
        parse_args(["optimizer.lr=0.1"])
    with pytest.raises(ConfigError, match=r"'seed=3'.*seeds="):
        parse_args(["seed=3"])
    options, passed = parse_args(["optimizers=[adam]", "experiment=cpu_demo", "hydra/launcher=joblib", "val_size=9"])
    assert options["optimizers"] == ["adam"] and options["seeds"] == [0, 1, 2]
    assert passed == ["experiment=cpu_demo", "hydra/launcher=joblib", "val_size=9"]


def test_plan_reads_presets_and_needs_a_validation_split() -> None:
    options, passed = parse_args(["experiment=cpu_demo_text", "optimizers=[sgdm,adam]", "threads=1"])
    study = plan_study(options, passed)  # language models validate on the corpus's own split
    assert [(a.optimizer, a.steps, a.preset_lr) for a in study.arms] == [
        ("sgdm", 0.0, 2.0), ("sgdm", 1.0, 2.0), ("adam", 0.0, 3e-3), ("adam", 1.0, 3e-3)]  # fmt: skip
    assert study.arms[2].lrs == [0.001, 0.003, 0.009]
    assert study.overrides == ["experiment=cpu_demo_text"] and study.selection_key == "final_val_ppl"  # threads: not
    with pytest.raises(ConfigError, match="val_size=0 for tuning"):
        plan_study(*parse_args(["experiment=cpu_demo"]))


def test_a_study_folder_keeps_its_protocol(tmp_path: Path) -> None:
    from xgrad.tune import main

    options, passed = parse_args(["experiment=cpu_demo_text", "optimizers=[adam]"])
    write_study(tmp_path, plan_study(options, passed))
    code = main([f"dir={tmp_path}", "experiment=cpu_demo_text", "optimizers=[adam]", "epochs=9", "phase=final"])
    assert code == 2  # epochs=9 would mix two protocols in one folder


def test_plan_phase_prints_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from xgrad.tune import main

    args = [f"dir={tmp_path}/s", "experiment=cpu_demo", "val_size=9", "optimizers=[adamw]", "steps=[0,1,2]"]
    args.append("phase=plan")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 arms, 9 tuning runs, then 6 final runs" in out
    assert "optimizer.lr=0.000333,0.001,0.003 seed=0 predict=false,true" in out
    assert "predict=true predict_steps=2" in out
    assert not (tmp_path / "s").exists()


def test_a_study_beside_other_runs_of_its_setting_never_shares_their_rows(tmp_path: Path) -> None:
    """Runs at the preset lr outside the study (seeds 0-2) stay out of the tuned arm's row (chosen lr 0.000333)."""
    study_dir, outside = tmp_path / "study", tmp_path / "plain"
    lrs = [0.000333, 0.001, 0.003]
    study = Study([], [1 / 3, 1, 3], [0], [0], "ppl", "final_val_ppl", [Arm("adam", s, 0.001, lrs) for s in (0, 1)])
    for steps in (0, 1):
        for lr in lrs:
            fake_run(study_dir, "adam", steps, lr, 0, 100.0 + (lr if steps == 0 else -lr) * 1000)
    fill_grid(study, study_dir)
    assert [a.selection.lr for a in study.arms] == [0.000333, 0.003]
    write_study(study_dir, study)
    for seed in (0, 1, 2):  # plain runs of the same setting at the preset lr, without prediction
        fake_run(outside, "adam", 0, 0.001, seed, 130.0, final_test_ppl=130.0 + seed, pair_id="plain")
        path = outside / "adam,s=0,lr=0.001" / f"seed={seed}" / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "overrides": "optimizer=adam"}))
    assert cli.main([str(study_dir), str(outside), "--out", str(tmp_path / "report")]) == 0
    table = pd.read_csv(tmp_path / "report" / "table_ptb_lstm.csv", keep_default_na=False).set_index("variant")
    assert sorted(table.index) == ["", "lr tuned: study"]
    assert table.loc["", "n_without"] == 3 and table.loc["", "final_without_mean"] == pytest.approx(131.0)
    tuned = table.loc["lr tuned: study"]
    assert (tuned["n_without"], tuned["n_with"], tuned["final_without_mean"]) == (1, 1, pytest.approx(100.0))


def test_tuning_table_keeps_small_factors_apart() -> None:
    from xgrad.report.tuning import TunedStudy, tuning_table

    lrs = grid_lrs(0.1, [1e-3, 1 / 300, 1])  # 0.0001, 0.000333, 0.1
    study = Study([], [1e-3, 1 / 300, 1], [0], [0], "ppl", "final_val_ppl", [Arm("adam", 0.0, 0.1, lrs)])
    study.arms[0].grid = [point(lr, 100.0 + i) for i, lr in enumerate(lrs)]
    study.arms[0].selection = select_lr(study.arms[0].grid, 0.1, higher_is_better=False)
    table = tuning_table(TunedStudy(Path("."), study), "t")
    assert table.headers[2:5] == ["×0.001", "×0.0033", "×1"]
    assert table.cells[0][2:5] == ["100.00 (lr 0.0001)", "101.00 (lr 0.000333)", "102.00 (lr 0.1)"]


# ----------------------------------------------------------------------------------- end to end


def test_tune_end_to_end_on_demo_images(tmp_path: Path) -> None:
    """2 lrs x 1 seed per arm, final seed 0 reused from the grid, then the report's tuning section."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    args = ["experiment=cpu_demo", "++dataset.n_train=60", "++dataset.n_test=20", "val_size=20", "epochs=1",
            "batch_size=20", "eval_batch_size=20", "scheduler.warmup_epochs=0", "model=lenet", "threads=1",
            "optimizers=[sgdm]", "factors=[0.1,1]", "seeds=[0]", "study=t", "extend=1"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "xgrad.tune", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    folder = tmp_path / "outputs" / "tune" / "t"
    summaries = [json.loads(p.read_text()) for p in folder.rglob("summary.json")]
    # 2 arms x 3 lrs x seed 0: a 2-lr grid's choice is always at an edge, so each grows by one lr (extend=1);
    # the final seed 0 is one of them, not a seventh run
    assert len(summaries) == 6
    study = json.loads((folder / "tuning.json").read_text())
    for arm in study["arms"]:
        lrs = [p["lr"] for p in arm["grid"]]
        assert lrs in ([0.001, 0.01, 0.1], [0.01, 0.1, 1.0])
        values = dict(zip(lrs, [p["values"]["0"] for p in arm["grid"]]))
        first = max((values[0.01], 0.01), (values[0.1], 0.1))[1] if values[0.01] != values[0.1] else 0.1  # a tie
        assert lrs == ([0.01, 0.1, 1.0] if first == 0.1 else [0.001, 0.01, 0.1])  # widened past the first choice
        assert arm["selection"]["lr"] == select_lr(
            [GridPoint(lr, {0: v}) for lr, v in values.items()], 0.1, higher_is_better=True).lr  # fmt: skip
    assert study["extend"] == 1 and "choice at the grid's edge, widening: sgdm s=0" in proc.stdout
    assert "lr chosen on mean final_val_acc" in proc.stdout
    assert cli.main([str(folder), "--out", str(tmp_path / "report")]) == 0
    tuning = pd.read_csv(tmp_path / "report" / "tuning_t.csv")
    assert len(tuning) == 6 and tuning["chosen"].sum() == 2
    table = pd.read_csv(tmp_path / "report" / "table_demo_images_lenet_reduced.csv")
    assert list(table["n_without"]) == [1] and list(table["n_with"]) == [1]  # one row: the lr is no variant
    assert "4 tuning runs at lrs not chosen" in (tmp_path / "report" / "README.md").read_text()
    assert (tmp_path / "report" / "tuning_t.png").stat().st_size > 0


def test_tuning_figure_ticks_never_crowd() -> None:
    from xgrad.report.tuning import spaced_ticks

    grids = {0.000333, 0.001, 0.003, 0.009, 0.0111, 0.0333, 0.1, 0.3}  # study 1's: Adam family's x9 meets SGDM's x1/9
    assert spaced_ticks(grids) == [0.000333, 0.001, 0.003, 0.009, 0.0333, 0.1, 0.3]
