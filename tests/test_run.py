"""The runner: configs compose, runs leave complete folders, resume is exact, errors are clear."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import CONF, ROOT, TINY, assert_resume_is_exact, make_cfg, run_cli, train_killed_at
from xgrad.rundir import read_metrics, read_summary
from xgrad.trainer import ConfigError, Trainer, train

GROUPS = ["dataset", "model", "optimizer", "scheduler", "logger", "experiment"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_config_composes(group):
    for option in _options(group):
        cfg = make_cfg([f"{group}={option}"])
        assert cfg.optimizer.name and cfg.model.name and cfg.dataset.name


def test_defaults_are_the_classic_setting():
    cfg = make_cfg([])
    assert (cfg.dataset.name, cfg.model.name, cfg.optimizer.name) == ("cifar10", "resnet18", "sgdm")
    assert cfg.optimizer.lr == 0.1 and cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == 5e-4
    assert cfg.batch_size == 128 and cfg.epochs == 200 and cfg.predict is False
    assert cfg.scheduler.milestones == [150] and cfg.scheduler.gamma == 0.1


def test_experiment_presets_follow_the_protocol():
    presets = _options("experiment")
    for dataset in ("cifar10", "cifar100"):
        for model in ("vgg11", "resnet34", "densenet121"):
            assert f"{dataset}_{model}" in presets
            cfg = make_cfg([f"experiment={dataset}_{model}", "optimizer=adamw"])
            assert (cfg.dataset.name, cfg.model.name, cfg.epochs, cfg.batch_size) == (dataset, model, 200, 128)
            assert cfg.optimizer.weight_decay == 1e-2 and cfg.optimizer.eps == 1e-8
    assert make_cfg(["experiment=cpu_cifar10_resnet20"]).reduced_scale is True
    for name in ("adam", "adabelief", "adam3"):
        opt = make_cfg(["experiment=cifar10_vgg11", f"optimizer={name}"]).optimizer
        assert (opt.lr, opt.eps, opt.weight_decay) == (1e-3, 1e-8, 5e-4)


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("model", ["resnet18", "resnet20", "densenet121", "vgg11"])
def test_short_cifar_run_per_model_family(tmp_path, cifar_root, model):
    dataset = "cifar100" if model == "vgg11" else "cifar10"
    cfg = make_cfg([f"dataset={dataset}", f"model={model}", "epochs=1", "batch_size=4", "eval_batch_size=20",
                    "train_subset=8",
                    "progress=line", "optimizer=adabelief", "predict=true", f"data_root={cifar_root}"])  # fmt: skip
    result = train(cfg, tmp_path / "run")
    assert result.status == "completed"
    summary = read_summary(tmp_path / "run")
    assert summary["dataset"] == dataset and summary["model"] == model and summary["synthetic"] is False
    assert 0 <= summary["final_test_acc"] <= 1 and summary["epochs_done"] == 1


def test_run_folder_contents_and_summary(tmp_path):
    cfg = make_cfg([*TINY, "optimizer=adamw", "predict=true", "predict_steps=2", "val_size=16", "seed=3"])
    result = train(cfg, tmp_path, overrides="x=1")
    assert result.status == "completed"
    assert {"metrics.csv", "summary.json", "checkpoint.pt"} <= _files(tmp_path)
    rows = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2]
    expected = {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                "epoch_seconds", "samples_per_second"}  # fmt: skip
    assert expected <= set(rows[0])
    assert all(0 <= r[k] <= 1 for r in rows for k in ("train_acc", "val_acc", "test_acc"))
    s = read_summary(tmp_path)
    for key in ("schema_version", "status", "task", "dataset", "model", "optimizer", "predict", "predict_steps",
                "seed", "synthetic", "reduced_scale", "epochs_done", "final_test_acc", "best_test_acc", "best_epoch",
                "best_selected_on", "wall_seconds", "train_seconds", "peak_memory_bytes", "device",
                "torch_version", "git_commit"):  # fmt: skip
        assert key in s, key
    assert s["status"] == "completed" and s["predict"] is True and s["predict_steps"] == 2.0 and s["seed"] == 3
    assert s["synthetic"] is True and s["best_selected_on"] == "val"
    best = rows[s["best_epoch"] - 1]
    assert best["val_acc"] == max(r["val_acc"] for r in rows)
    assert s["best_test_acc"] == best["test_acc"] and s["final_test_acc"] == rows[-1]["test_acc"]
    # Atomic writes leave no temporary files behind.
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _comparable(rows):
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "samples_per_second")} for r in rows]


def test_kill_and_resume_gives_identical_metrics(tmp_path, monkeypatch):
    overrides = [*TINY, "epochs=3", "optimizer=sgdm", "predict=true", "scheduler=multistep",
                 "scheduler.milestones=[2]"]  # fmt: skip
    assert_resume_is_exact(overrides, tmp_path, monkeypatch)


def test_rerunning_a_completed_run_does_nothing(tmp_path, caplog):
    caplog.set_level("INFO", logger="xgrad")
    cfg = make_cfg([*TINY, "epochs=1"])
    train(cfg, tmp_path)
    before = (tmp_path / "metrics.csv").read_text()
    result = train(cfg, tmp_path)
    assert result.skipped and result.status == "completed"
    assert (tmp_path / "metrics.csv").read_text() == before
    assert "already completed" in caplog.text


def test_divergence_marks_run_and_stops(tmp_path):
    cfg = make_cfg([*TINY, "epochs=3", "optimizer=sgdm", "optimizer.lr=1e30"])
    result = train(cfg, tmp_path)
    assert result.status == "diverged"
    assert read_summary(tmp_path)["status"] == "diverged"


def test_failure_is_recorded_and_reraised(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read checkpoint"):
        train(make_cfg(TINY), tmp_path)
    # The checkpoint is unreadable before training starts: no summary claims anything ran.
    assert read_summary(tmp_path) is None or read_summary(tmp_path)["status"] == "failed"


def test_exception_during_training_marks_failed(tmp_path, monkeypatch):
    def boom(self, epoch):
        raise OSError("disk on fire")

    monkeypatch.setattr(Trainer, "train_epoch", boom)
    with pytest.raises(OSError):
        train(make_cfg(TINY), tmp_path)
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and "disk on fire" in summary["error"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer.lr=-1"], "lr=-1"),
        (["predict_steps=-0.5"], "predict_steps=-0.5"),
        (["optimizer=sgd", "predict=true"], "optimizer='sgd'"),
        (["grad_accum=0"], "grad_accum=0"),
        (["optimizer=adam", "optimizer.betas=[0.9,1.5]"], r"optimizer.betas\[1\]=1.5"),
        (["scheduler.interval=hourly"], "interval='hourly'"),
        (["threads=0"], "threads=0"),
        (["seed=1.5"], "seed=1.5"),
        (["label_smoothing=abc"], "label_smoothing='abc'"),
        (["val_size=48"], "val_size=48: accepted 0 .* to 47"),
        (["train_subset=1000"], "train_subset=1000: accepted 1 to 48"),
        (["dataset.n_train=0"], "dataset.n_train=0"),
        (["model=lstm"], "model=lstm is a language model"),
    ],
)
def test_bad_values_raise_config_errors(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(make_cfg([*TINY, *overrides]), tmp_path)


def test_threads_setting(tmp_path):
    before = torch.get_num_threads()
    try:
        assert train(make_cfg([*TINY, "epochs=1", "threads=1"]), tmp_path).status == "completed"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_gradient_accumulation_and_clipping_run(tmp_path):
    cfg = make_cfg([*TINY, "epochs=1", "grad_accum=2", "grad_clip=1.0", "predict=true", "label_smoothing=0.1"])
    assert train(cfg, tmp_path).status == "completed"


def test_seeded_cpu_runs_are_bit_reproducible(tmp_path):
    cfg = make_cfg([*TINY, "optimizer=adam3", "predict=true"])
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    assert _comparable(read_metrics(tmp_path / "a")) == _comparable(read_metrics(tmp_path / "b"))


@pytest.mark.parametrize("mode", ["disabled", "offline"])
def test_wandb_modes(tmp_path, monkeypatch, mode):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", mode)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg([*TINY, "epochs=1", "logger=wandb", f"logger.mode={mode}"])
    assert train(cfg, tmp_path).status == "completed"
    offline_runs = list((tmp_path / "wandb").glob("offline-run-*")) if (tmp_path / "wandb").exists() else []
    assert bool(offline_runs) == (mode == "offline")


def test_tensorboard_logger(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = make_cfg([*TINY, "epochs=1", "logger=tensorboard"])
    assert train(cfg, tmp_path).status == "completed"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_broken_tracker_warns_and_training_goes_on(tmp_path, monkeypatch):
    import wandb

    def no_network(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(wandb, "init", no_network)
    cfg = make_cfg([*TINY, "epochs=1", "logger=wandb", "logger.mode=online"])
    with pytest.warns(UserWarning) as caught:
        assert train(cfg, tmp_path).status == "completed"
    messages = [str(w.message) for w in caught]
    assert any("logging offline" in m for m in messages) and any("W&B disabled" in m for m in messages)


# ----------------------------------------------------------------------------------- the command line


def test_cli_run_folder_and_rerun(tmp_path):
    args = [*TINY, "epochs=1", "optimizer=adamw", "predict=true"]
    first = run_cli(args, tmp_path)
    assert first.returncode == 0, first.stderr
    folders = list((tmp_path / "outputs" / "runs").glob("*/seed=0"))
    assert len(folders) == 1
    assert "optimizer=adamw" in folders[0].parent.name and "progress" not in folders[0].parent.name
    assert (folders[0] / ".hydra" / "config.yaml").exists()
    second = run_cli(args, tmp_path)
    assert second.returncode == 0 and "already completed" in second.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimizer=lamb"], "lamb"),
        (["model=resnet1000"], "resnet1000"),
        (["optimizer.lr=-0.1"], "lr=-0.1"),
        (["optimizer=sgd", "predict=true"], "predict=true"),
    ],
)
def test_cli_bad_overrides_exit_nonzero(tmp_path, args, message):
    proc = run_cli([*TINY, *args], tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout


def test_cli_config_error_leaves_no_run_folder(tmp_path):
    proc = run_cli([*TINY, "optimizer.lr=-1"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: invalid optimizer.lr=-1: accepted")
    assert not list((tmp_path / "outputs" / "runs").glob("*"))


def test_cli_ctrl_c_says_how_to_resume(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "xgrad.run", *TINY, "epochs=200", f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.csv").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "re-run the same command to resume" in stderr and "Traceback" not in stderr
    assert read_summary(run_dir)["status"] == "interrupted"


def test_run_name_follows_the_resolved_configuration():
    from hydra import initialize_config_dir

    from xgrad.identity import MAX_NAME_BYTES, run_name

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        assert run_name(["optimizer.lr=1"]) == run_name(["optimizer.lr=1.0"]) == "optimizer.lr=1"
        assert run_name(["optimizer.lr=1e-3", "predict=True"]) == "optimizer.lr=0.001,predict=true"
        assert run_name(["optimizer.lr=0.001", "predict=true"]) == "optimizer.lr=0.001,predict=true"
        # A value the preset already sets, a typed default, a group's default choice: no part of the name.
        preset = ["experiment=cifar10_vgg11", "optimizer=adam"]
        assert (
            run_name([*preset, "optimizer.lr=0.001"]) == run_name(preset) == "experiment=cifar10_vgg11,optimizer=adam"
        )
        assert run_name(["optimizer=sgdm", "optimizer.lr=0.1", "epochs=200"]) == "default"
        assert run_name(["optimizer=adam", "optimizer.eps=1e-6"]) == "optimizer.eps=1e-06,optimizer=adam"
        assert run_name(["optimizer=adam", "optimizer.betas=[0.9,.99]"]) == "optimizer.betas=[0.9,0.99],optimizer=adam"
        assert run_name(["seed=3", "device=cpu", "data_root=/d/1.5", "progress=line", "logger=wandb"]) == "default"
        long = [f"++tag{i}=a_rather_long_value_{i}" for i in range(12)]
        name = run_name(long)
        assert len(name.encode()) <= MAX_NAME_BYTES and name.startswith("tag0=a_rather_long_value_0,") and "~" in name
        assert name != run_name([*long, "++tag12=x"])


def test_identity_leaves_out_what_does_not_change_results():
    from xgrad.identity import identity

    a = identity(make_cfg(["optimizer.lr=1"]))
    assert a == identity(make_cfg(["optimizer.lr=1.0", "seed=4", "device=cpu", "threads=2", "progress=line"]))
    assert a != identity(make_cfg(["optimizer.lr=1", "epochs=3"]))


def test_a_preset_table_entry_of_another_optimizer_does_not_change_a_runs_identity():
    """Tables are read through interpolations: adding AdamW's decay to a preset leaves Adam's runs the same runs
    (their folders resume), while the entry that does reach a run changes it."""
    from xgrad.identity import identity

    adam = identity(make_cfg(["experiment=cpu_ptb_zaremba_small", "optimizer=adam"]))
    assert "wd_table" not in adam and "lr_table" not in adam
    edited = ["experiment=cpu_ptb_zaremba_small", "wd_table.adamw=0.1", "lr_table.sgdm=9"]
    assert identity(make_cfg([*edited, "optimizer=adam"])) == adam
    assert identity(make_cfg([*edited, "optimizer=adamw"])) != identity(
        make_cfg(["experiment=cpu_ptb_zaremba_small", "optimizer=adamw"])
    )


def test_a_prediction_run_pairs_with_its_baseline_whatever_its_prediction_keys():
    """Keys only the prediction arm reads (method, decay, error sampling, horizon) must not split a run from its
    baseline: the report pairs by pair_id."""
    from xgrad.identity import config_id, identity, pair_id

    baseline = identity(make_cfg(["optimizer=adamw"]))
    predicted = identity(make_cfg(["optimizer=adamw", "predict=true", "predict_steps=2", "predict_method=extrapolate",
                                   "predict_weight_decay=true", "prediction_error_every=0"]))  # fmt: skip
    assert pair_id(predicted) == pair_id(baseline) and config_id(predicted) != config_id(baseline)
    assert pair_id(identity(make_cfg(["optimizer=adamw", "optimizer.lr=0.01"]))) != pair_id(baseline)


def test_a_folder_of_another_configuration_is_refused(tmp_path):
    """Finding 1: an edited preset (adamw lr 0.001 -> 0.05) re-run into the folder said "already completed"."""
    from xgrad.errors import ConfigMismatch
    from xgrad.rundir import read_config

    first = [*TINY, "epochs=1", "optimizer=adamw"]
    assert train(make_cfg(first), tmp_path).status == "completed"
    summary = (tmp_path / "summary.json").read_text()
    assert read_config(tmp_path)["optimizer"]["lr"] == 0.001
    edited = [*first, "optimizer.lr=0.05"]  # what the edited preset gives
    with pytest.raises(ConfigMismatch, match=r"optimizer\.lr: 0\.001 there, 0\.05 now.*resume=false"):
        train(make_cfg(edited), tmp_path)
    assert read_config(tmp_path)["optimizer"]["lr"] == 0.001 and (tmp_path / "summary.json").read_text() == summary
    # Half-finished: it would have resumed with the checkpoint's lr under a config that says otherwise.
    (tmp_path / "summary.json").write_text(summary.replace('"completed"', '"running"'))
    with pytest.raises(ConfigMismatch):
        train(make_cfg(edited), tmp_path)
    # resume=false starts the run over in place, under the new configuration.
    assert train(make_cfg([*edited, "resume=false"]), tmp_path).status == "completed"
    assert read_config(tmp_path)["optimizer"]["lr"] == 0.05


def test_cli_one_folder_per_configuration_and_refusal(tmp_path):
    args = [*TINY, "epochs=1"]
    assert run_cli([*args, "optimizer.lr=1e-2"], tmp_path).returncode == 0
    again = run_cli([*args, "optimizer.lr=0.010"], tmp_path)  # the same run, spelled differently
    assert again.returncode == 0 and "already completed" in again.stdout
    (folder,) = (tmp_path / "outputs" / "runs").glob("*/seed=0")
    assert "optimizer.lr=0.01" in folder.parent.name
    recorded = (folder / "config.yaml").read_text()
    other = run_cli([*args, "optimizer.lr=0.05", f"hydra.run.dir='{folder}'"], tmp_path)
    assert other.returncode == 2
    line = _one_line_error(other)
    assert "optimizer.lr: 0.01 there, 0.05 now" in line and "resume=false" in line
    assert (folder / "config.yaml").read_text() == recorded and (folder / "summary.json").exists()


def test_cli_long_overrides_get_a_short_folder_name(tmp_path):
    args = [*TINY, "epochs=1", "optimizer=adamw", "optimizer.lr=0.003", "optimizer.weight_decay=0.05",
            "optimizer.betas=[0.9,0.99]", "optimizer.eps=1e-6", "scheduler=cosine", "scheduler.warmup_epochs=1",
            "scheduler.min_lr_factor=0.01", "predict=true", "predict_steps=2", "label_smoothing=0.1",
            "grad_clip=1.0"]  # fmt: skip
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    (folder,) = (tmp_path / "outputs" / "runs").glob("*/seed=0")
    assert "~" in folder.parent.name and (folder / "summary.json").exists()


def test_cli_missing_and_corrupt_data_offline(tmp_path):
    empty = tmp_path / "nodata"
    proc = run_cli(["dataset.download=false", f"data_root={empty}", "epochs=1"], tmp_path)
    assert proc.returncode != 0
    assert str(empty) in proc.stderr and "cifar-10-batches-py" in proc.stderr

    from tests.conftest import write_cifar

    folder = write_cifar(tmp_path / "bad")
    (folder / "data_batch_3").write_bytes(b"\x80\x04truncated")
    proc = run_cli([f"data_root={tmp_path / 'bad'}", "epochs=1"], tmp_path)
    assert proc.returncode != 0 and "data_batch_3" in proc.stderr


def test_cli_multirun_goes_on_after_a_failed_job(tmp_path):
    sweep = tmp_path / "sweep"
    # The middle job asks for more training images than the data set has (known only once the data are read):
    # it fails, the others still run, and the sweep exits non-zero.
    proc = run_cli(["-m", *TINY, "epochs=1", "train_subset=16,1000,32", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summaries = {p.parent.parent.name: json.loads(p.read_text()) for p in sweep.rglob("summary.json")}
    assert sorted(s["status"] for s in summaries.values()) == ["completed", "completed", "failed"]
    failed = next(s for s in summaries.values() if s["status"] == "failed")
    assert "train_subset=1000" in failed["error"]
    assert "3 jobs" in proc.stdout and "1 failed" in proc.stdout


def test_cli_multirun_counts_a_job_that_cannot_resume(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "epochs=1", "optimizer=sgdm,adamw", f"hydra.sweep.dir={sweep}", "resume=true"]
    assert run_cli(args, tmp_path).returncode == 0
    (summary_path,) = [p for p in sweep.rglob("summary.json") if "adamw" in str(p)]
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**summary, "status": "running"}))  # as if killed in its last epoch
    (summary_path.parent / "checkpoint.pt").write_bytes(b"garbage")
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = json.loads(summary_path.read_text())
    assert failed["status"] == "failed" and "cannot read checkpoint" in failed["error"]
    assert "1 failed" in proc.stdout


@pytest.mark.parametrize(("status", "code"), [("completed", 0), ("diverged", 0), ("failed", 1), ("interrupted", 1)])
def test_wandb_run_finishes_with_the_run_status(tmp_path, status, code):
    from xgrad.tracking import Trackers

    class FakeRun:
        def __init__(self):
            self.summary = {}

        def finish(self, exit_code):
            self.exit_code = exit_code

    trackers = Trackers(make_cfg(TINY), tmp_path)  # no tracker chosen; a stand-in W&B run below
    trackers.wandb_run = run = FakeRun()
    trackers.finish({"status": status})
    trackers.close()
    assert run.exit_code == code


def test_written_files_follow_the_umask(tmp_path):
    from xgrad.rundir import _UMASK, atomic_write

    atomic_write(tmp_path / "x.txt", lambda f: f.write(b"hi"))
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o666 & ~_UMASK


# ----------------------------------------------------------------------------------- the folder's integrity


def test_leftover_temporaries_are_removed_when_a_run_folder_is_opened(tmp_path):
    stale = [tmp_path / ".summary.json.k1ll3d.tmp", tmp_path / ".checkpoint.pt.x9.tmp", tmp_path / ".metrics.csv.a.tmp"]
    for path in stale:
        path.write_bytes(b"half a write")
    (tmp_path / ".notes.tmp").write_text("mine")  # not a name the runner writes: stays
    assert train(make_cfg([*TINY, "epochs=1"]), tmp_path).status == "completed"
    assert not any(p.exists() for p in stale) and (tmp_path / ".notes.tmp").read_text() == "mine"


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert lines and "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


def test_cli_malformed_summary_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("[1]")
    proc = run_cli([*TINY, "epochs=1", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 2
    line = _one_line_error(proc)
    assert "summary.json is not a run summary" in line and "resume=false" in line
    assert (run_dir / "summary.json").read_text() == "[1]"


def test_cli_data_root_that_is_a_file_is_one_line(tmp_path):
    a_file = tmp_path / "data.tar"
    a_file.write_text("not a folder")
    proc = run_cli(["dataset.download=false", f"data_root={a_file}", "epochs=1"], tmp_path)
    assert proc.returncode == 2
    line = _one_line_error(proc)
    assert f"invalid data_root='{a_file}'" in line and "is a file" in line and "mkdir" not in proc.stderr


def test_one_process_per_run_folder(tmp_path):
    from xgrad.errors import FolderInUse
    from xgrad.rundir import hold

    cfg = make_cfg([*TINY, "epochs=1"])
    with hold(tmp_path), pytest.raises(FolderInUse, match=f"in use by process {os.getpid()} on "):
        train(cfg, tmp_path)
    assert not (tmp_path / "summary.json").exists()
    # A lock file left by a killed run (its process is gone, and with it the lock) is taken over.
    (tmp_path / ".lock").write_text("process 999999 on elsewhere (since 2020-01-01 00:00:00 UTC)\n")
    assert train(cfg, tmp_path).status == "completed"


def test_cli_second_launch_into_a_running_folder_exits_2(tmp_path):
    from xgrad.rundir import hold

    run_dir = tmp_path / "run"
    with hold(run_dir):
        proc = run_cli([*TINY, "epochs=1", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 2
    assert f"in use by process {os.getpid()}" in _one_line_error(proc)
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing written, the launch's files removed


def test_cli_rejected_run_leaves_a_folder_it_did_not_create(tmp_path):
    """Finding 3: a bad value with hydra.run.dir=<someone's folder holding .hydra/ and logs> deleted it."""
    folder = tmp_path / "someones_logs"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("theirs: 1\n")
    (folder / "train.log").write_text("their log\n")
    proc = run_cli([*TINY, "batch_size=0", f"hydra.run.dir={folder}"], tmp_path)
    assert proc.returncode == 2
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == [
        ".hydra",
        ".hydra/config.yaml",
        "train.log",
    ]
    assert (folder / ".hydra" / "config.yaml").read_text() == "theirs: 1\n"
    assert (folder / "train.log").read_text() == "their log\n"


# ----------------------------------------------------------------------------------- clear failures


def test_disk_full_is_said_and_the_summary_claims_only_what_was_saved(tmp_path, monkeypatch):
    """Finding 8: "enforce fail at inline_container.cc", and a failed summary claiming 2 epochs where 1 was saved."""
    from tests.conftest import fill_disk_at_second_checkpoint

    fill_disk_at_second_checkpoint(monkeypatch.setattr)
    with pytest.raises(Exception, match=r"disk full \(no space left on device\) while writing .*checkpoint\.pt"):
        train(make_cfg([*TINY, "epochs=3"]), tmp_path)
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and "disk full" in summary["error"] and "enforce" not in summary["error"]
    assert summary["epochs_done"] == 1 == len(read_metrics(tmp_path)) and summary["best_epoch"] == 1
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["progress"]["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_disk_full_single_run_and_sweep_job_are_one_line(tmp_path):
    from tests.conftest import run_cli_with_full_disk

    run_dir = tmp_path / "run"
    proc = run_cli_with_full_disk([*TINY, "epochs=2", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 1
    line = _one_line_error(proc)
    assert line.startswith("error: disk full") and "enforce fail" not in proc.stderr
    assert read_summary(run_dir)["epochs_done"] == 1
    sweep = tmp_path / "sweep"
    proc = run_cli_with_full_disk(["-m", *TINY, "epochs=2", "optimizer=sgdm", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 1 and "1 failed" in proc.stdout
    (summary_path,) = sweep.rglob("summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "failed" and "DiskFull: disk full" in summary["error"]
    assert summary["epochs_done"] == 1 and "disk full" in proc.stdout


def test_checkpoint_of_another_model_or_configuration_is_one_line(tmp_path):
    from xgrad.errors import ResumeError

    lenet = tmp_path / "lenet"
    train(make_cfg([*TINY, "epochs=1", "model=lenet"]), lenet)
    state = torch.load(lenet / "checkpoint.pt", weights_only=False)
    other = tmp_path / "other"
    other.mkdir()
    torch.save(state, other / "checkpoint.pt")  # a checkpoint copied in from another run
    with pytest.raises(ResumeError, match=r"is of another configuration .*model"):
        train(make_cfg([*TINY, "epochs=1"]), other)
    del state["identity"]  # as written before checkpoints recorded their configuration
    torch.save(state, other / "checkpoint.pt")
    with pytest.raises(ResumeError, match="does not fit this configuration"):
        train(make_cfg([*TINY, "epochs=1"]), other)
    proc = run_cli([*TINY, "epochs=1", f"hydra.run.dir={other}"], tmp_path)
    assert proc.returncode == 2 and "does not fit this configuration" in _one_line_error(proc)


def test_a_checkpoint_whose_identity_held_the_presets_tables_resumes(tmp_path, monkeypatch):
    """Checkpoints written before the tables left the identity record them; such a killed run still resumes."""
    cfg = make_cfg([*TINY, "epochs=2", "optimizer=adam"])
    folder = tmp_path / "run"
    train_killed_at(cfg, folder, monkeypatch, epoch=1)
    state = torch.load(folder / "checkpoint.pt", weights_only=False)
    state["identity"]["lr_table"] = {"adam": 0.001, "sgdm": 9.0}  # as an older version recorded it
    torch.save(state, folder / "checkpoint.pt")
    assert train(cfg, folder).summary["epochs_done"] == 2
    state["identity"]["optimizer"]["lr"] = 0.5  # what the run computes still counts
    torch.save(state, folder / "checkpoint.pt")
    (folder / "summary.json").unlink()
    from xgrad.errors import ResumeError

    with pytest.raises(ResumeError, match=r"another configuration \(differs in optimizer.lr\)"):
        train(cfg, folder)


def test_wandb_online_without_network_falls_back_to_offline_quickly(tmp_path, monkeypatch):
    """Finding 9: W&B online without network stalled ~100 s per run before giving up."""
    import contextlib
    import socket
    import threading
    import warnings

    pytest.importorskip("wandb")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []  # a server that accepts and never answers: what an unreachable W&B looks like to the client

    def accept_and_hold() -> None:
        with contextlib.suppress(OSError):  # the test closes the server
            while True:
                held.append(server.accept())

    threading.Thread(target=accept_and_hold, daemon=True).start()
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
    cfg = make_cfg([*TINY, "epochs=1", "logger=wandb", "logger.mode=online"])
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train(cfg, tmp_path).status == "completed"
    assert time.monotonic() - start < 60
    ours = [str(w.message) for w in caught if "W&B" in str(w.message)]
    assert len(ours) == 1 and "logging offline" in ours[0], ours
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    server.close()


def test_a_run_resumed_under_other_code_records_both_commits(tmp_path, monkeypatch):
    """summary.json's git_commits lists the code that trained the run, oldest first, each once."""
    import xgrad.trainer as trainer_module

    cfg = make_cfg([*TINY, "epochs=3"])
    folder = tmp_path / "run"
    monkeypatch.setattr(trainer_module, "git_commit", lambda: "a" * 40)
    train_killed_at(cfg, folder, monkeypatch, epoch=1)
    assert read_summary(folder)["git_commits"] == ["a" * 40]
    monkeypatch.setattr(trainer_module, "git_commit", lambda: "b" * 40)
    train_killed_at(cfg, folder, monkeypatch, epoch=2)
    train(cfg, folder)  # resumed again under the same code: b is not listed twice
    summary = read_summary(folder)
    assert summary["status"] == "completed" and summary["epochs_done"] == 3
    assert summary["git_commits"] == ["a" * 40, "b" * 40] and summary["git_commit"] == "b" * 40

    # A checkpoint from before the commits were kept: the killed run's summary says what trained it, if it can.
    old = tmp_path / "old"
    train_killed_at(cfg, old, monkeypatch, epoch=1)
    state = torch.load(old / "checkpoint.pt", weights_only=False)
    del state["progress"]["git_commits"]
    torch.save(state, old / "checkpoint.pt")
    summary = json.loads((old / "summary.json").read_text())
    summary.pop("git_commits")  # as the older version wrote it
    (old / "summary.json").write_text(json.dumps({**summary, "git_commit": "c" * 40}))
    monkeypatch.setattr(trainer_module, "git_commit", lambda: "d" * 40)
    train_killed_at(cfg, old, monkeypatch, epoch=1)  # killed again before its first checkpoint under d
    assert read_summary(old)["git_commits"] == ["c" * 40, "d" * 40]  # and its summary now says d ...
    assert train(cfg, old).summary["git_commits"] == ["c" * 40, "d" * 40]  # ... but c trained epoch 1


def test_the_commit_is_read_once_per_process(monkeypatch):
    """A checkout moved on mid-run does not change the commit recorded: the code running is the code imported."""
    import xgrad.trainer as trainer_module

    heads = iter(["a" * 40, "b" * 40])
    calls = []

    def rev_parse(*args, **kwargs):
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, stdout=next(heads) + "\n")

    trainer_module.git_commit.cache_clear()
    monkeypatch.setattr(trainer_module.subprocess, "run", rev_parse)
    try:
        assert trainer_module.git_commit() == trainer_module.git_commit() == "a" * 40 and len(calls) == 1
    finally:
        trainer_module.git_commit.cache_clear()
