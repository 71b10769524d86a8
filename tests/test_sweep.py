"""Sweeps and scale-out: named grids, relaunch, launchers, the W&B sweep file, data-parallel training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import CONF, ROOT, TINY, make_cfg, run_cli, write_cifar
from xgrad.rundir import read_metrics

TINY_1 = [a for a in TINY if not a.startswith("epochs=")] + ["epochs=1"]


def _summaries(folder: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(folder)): json.loads(p.read_text()) for p in folder.rglob("summary.json")}


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "sweep").glob("*.yaml")))
def test_named_sweeps_compose(name):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"sweep={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert cfg.hydra.sweep.dir == f"outputs/sweeps/{name}"
    assert "optimizer" in params and ("predict" in params or "predict_steps" in params)
    for experiment in str(params.experiment).split(","):
        make_cfg([f"experiment={experiment}"])  # every swept preset exists


def test_paper_grids_cover_all_optimizers_with_and_without_prediction():
    for name in ("cifar10_paper", "cifar100_paper", "ptb_paper"):
        params = yaml.safe_load((CONF / "sweep" / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
        assert params["optimizer"].split(",") == ["sgdm", "adam", "adamw", "adabelief", "adam3"]
        assert params["predict"] == "false,true" and len(params["seed"].split(",")) >= 3
    horizon = yaml.safe_load((CONF / "sweep" / "horizon.yaml").read_text())
    assert horizon["hydra"]["sweeper"]["params"]["predict_steps"] == "0,0.5,1,2,4"


def test_relaunch_skips_completed_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY_1, "optimizer=sgdm,adamw", "predict=true", f"hydra.sweep.dir={sweep}"]
    first = run_cli(args, tmp_path)
    assert first.returncode == 0, first.stderr
    before = {k: read_metrics(sweep / k) for k in _summaries(sweep)}
    assert len(before) == 2 and all(s["status"] == "completed" for s in _summaries(sweep).values())
    second = run_cli(args, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("already completed") + second.stdout.count("already completed") == 2
    assert {k: read_metrics(sweep / k) for k in _summaries(sweep)} == before
    assert "2 jobs: 2 completed" in second.stdout


def test_joblib_launcher_runs_jobs_in_parallel(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *TINY_1, "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                    f"hydra.sweep.dir={sweep}"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summaries = _summaries(sweep)
    assert sorted(s["seed"] for s in summaries.values()) == [0, 1]
    assert all(s["status"] == "completed" and key.endswith(f"seed={s['seed']}") for key, s in summaries.items())


def test_submitit_local_launcher_runs_two_jobs(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *TINY_1, "optimizer=sgdm,adam3", "predict=true", "hydra/launcher=submitit_local",
                    "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summaries = _summaries(sweep)
    assert sorted(s["optimizer"] for s in summaries.values()) == ["adam3", "sgdm"]
    assert all(s["status"] == "completed" for s in summaries.values())


@pytest.mark.parametrize("launcher", ["slurm", "gpus_local"])
def test_cluster_launcher_configs_compose(launcher):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}", "sweep=cifar10_paper"],
                      return_hydra_config=True)  # fmt: skip
    target = cfg.hydra.launcher._target_
    if launcher == "slurm":  # the scheduler gives each job (one task) one GPU
        assert target.endswith("SlurmLauncher")
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.tasks_per_node == 1
    else:
        assert target == "hydra_plugins.xgrad_launcher.gpus_local.GPUPoolLauncher"
        assert cfg.hydra.launcher.gpus is None


def _job_clocks(sweep: Path) -> list[tuple[float, float, str]]:
    """(start, end, visible devices) of every job of ``sweep``, from its summary.json and JobClock's record."""
    jobs = []
    for key, summary in _summaries(sweep).items():
        clock = json.loads((sweep / key / "job_clock.json").read_text())
        assert summary["status"] == "completed" and summary["visible_devices"] == clock["visible_devices"]
        jobs.append((clock["start"], clock["end"], summary["visible_devices"]))
    return jobs


def _assert_one_gpu_per_running_job(jobs: list[tuple[float, float, str]], gpus: int) -> None:
    for i, (start_a, end_a, gpu_a) in enumerate(jobs):
        for start_b, end_b, gpu_b in jobs[i + 1 :]:
            if start_a < end_b and start_b < end_a:  # ran at the same time
                assert gpu_a != gpu_b, jobs
    at_once = max(sum(s <= start < e for s, e, _ in jobs) for start, _, _ in jobs)
    assert at_once == gpus, jobs  # never more jobs than GPUs, and every GPU in use


def test_gpus_local_runs_one_job_per_gpu_at_a_time(tmp_path):
    pytest.importorskip("submitit")
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *TINY_1, "seed=0,1,2,3", "hydra/launcher=gpus_local", "hydra.launcher.gpus=2",
                    "+hydra.callbacks.clock._target_=tests.conftest.JobClock", f"hydra.sweep.dir={sweep}"],
                   tmp_path, env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = _job_clocks(sweep)
    assert len(jobs) == 4 and {gpu for _, _, gpu in jobs} == {"0", "1"}
    _assert_one_gpu_per_running_job(jobs, gpus=2)


def test_gpu_pool(monkeypatch):
    from hydra_plugins.xgrad_launcher.gpus_local import gpu_pool

    assert gpu_pool(3) == [0, 1, 2] and gpu_pool([2, 0]) == [2, 0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpu_pool(None) == [2, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_pool(None) == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_pool(None) == list(range(torch.cuda.device_count()))
    for bad in (0, -1, True, 1.5, [], [0, 0], [-1], "0,1"):
        with pytest.raises(ValueError, match=r"hydra\.launcher\.gpus"):
            gpu_pool(bad)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8a1b")
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        gpu_pool(None)


def test_gpus_local_rejects_a_bad_gpu_list_before_writing_anything(tmp_path):
    pytest.importorskip("submitit")
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *TINY_1, "hydra/launcher=gpus_local", "hydra.launcher.gpus=[1,1]",
                    f"hydra.sweep.dir={sweep}"], tmp_path)  # fmt: skip
    assert proc.returncode == 2 and not sweep.exists()
    assert proc.stderr.strip().splitlines() == [
        "error: invalid hydra.launcher.gpus=[1, 1]: accepted null (all visible GPUs), a count >= 1, or a list of "
        "distinct GPU ids >= 0"
    ]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two or more GPUs")
def test_one_gpu_per_job_on_a_multi_gpu_machine(tmp_path):
    sweep = tmp_path / "sweep"
    gpus = torch.cuda.device_count()
    seeds = ",".join(str(i) for i in range(2 * gpus))
    proc = run_cli(["-m", *TINY_1, "device=cuda", f"seed={seeds}", "hydra/launcher=gpus_local",
                    "+hydra.callbacks.clock._target_=tests.conftest.JobClock", f"hydra.sweep.dir={sweep}"],
                   tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = _job_clocks(sweep)
    assert {gpu for _, _, gpu in jobs} == {str(i) for i in range(gpus)}
    assert all(s["device"].startswith("cuda") for s in _summaries(sweep).values())
    _assert_one_gpu_per_running_job(jobs, gpus=gpus)


def test_wandb_sweep_file_runs_its_command_offline(tmp_path):
    spec = yaml.safe_load((ROOT / "sweeps" / "wandb_cifar10_resnet34.yaml").read_text())
    assert spec["method"] == "grid" and "${args_no_hyphens}" in spec["command"]
    params = spec["parameters"]
    assert params["optimizer"]["values"] == ["sgdm", "adam", "adamw", "adabelief", "adam3"]
    assert params["predict"]["values"] == [False, True]
    # One grid point, formatted the way the W&B agent formats ${args_no_hyphens} (key=value, Python str values).
    point = {k: (v["values"][-1] if "values" in v else v["value"]) for k, v in params.items()}
    args = [f"{k}={v}" for k, v in point.items()]
    command = []
    for part in spec["command"]:
        if part == "${env}":
            continue
        command += args if part == "${args_no_hyphens}" else [sys.executable if part == "${interpreter}" else part]
    data = tmp_path / "data"
    write_cifar(data, "cifar10")
    # Shrunk so it finishes in seconds; W&B offline (the agent would run it online).
    command += [f"data_root={data}", "epochs=1", "train_subset=8", "batch_size=4", "eval_batch_size=20",
                "progress=line"]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (summary,) = _summaries(tmp_path / "outputs").values()
    assert summary["model"] == "resnet34" and summary["optimizer"] == "adam3" and summary["predict"] is True
    assert list((tmp_path / "outputs").rglob("offline-run-*"))


# ----------------------------------------------------------------------------------- data parallel

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
DDP_ARGS = [a for a in TINY if not a.startswith(("model=", "epochs="))] + [
    "model=lenet", "epochs=2", "optimizer=adamw", "predict=true", "dataset.n_train=64",
]  # fmt: skip


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_torchrun_two_processes_match_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "xgrad.run", *DDP_ARGS,
         f"hydra.run.dir={tmp_path / 'ddp'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    single = run_cli([*DDP_ARGS, f"hydra.run.dir={tmp_path / 'single'}"], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    a = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=False)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    rows_a, rows_b = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "single")
    for ra, rb in zip(rows_a, rows_b):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["test_acc"] == rb["test_acc"]


def _ranks_step(rank: int, world_size: int, init_file: str, out: str) -> None:
    import torch.distributed as dist
    from torch import nn

    from xgrad import WeightPredictor
    from xgrad.optim import AdaBelief

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)))
    optimizer = AdaBelief(model.parameters(), lr=1e-2)
    predictor = WeightPredictor(optimizer, steps=2)
    gen = torch.Generator().manual_seed(100 + rank)  # every rank sees different data
    for _ in range(5):
        x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        optimizer.zero_grad(set_to_none=True)
        with predictor:
            nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


def test_ranks_stay_in_lock_step_with_prediction(tmp_path):
    out = tmp_path / "params.pt"
    torch.multiprocessing.spawn(_ranks_step, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    a, b = torch.load(out)
    assert torch.equal(a, b)


def test_sweep_summary_counts_a_summary_that_is_not_an_object_as_unreadable(tmp_path):
    from xgrad.sweep import summarize_sweep

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "summary.json").write_text("[1]")
    counts, problems = summarize_sweep(tmp_path)
    assert counts == {"unreadable": 1} and problems[0][0] == tmp_path / "a"


def test_relaunch_while_a_job_runs_skips_it_and_says_so(tmp_path):
    from hydra import initialize_config_dir

    from xgrad.identity import run_name
    from xgrad.rundir import hold

    sweep = tmp_path / "sweep"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        busy = sweep / run_name([*TINY_1, "optimizer=adamw"]) / "seed=0"
    busy.mkdir(parents=True)
    (busy / "summary.json").write_text('{"status": "running"}')  # written by that launch during this one
    with hold(busy):  # as if an earlier launch of the sweep were still running that job
        proc = run_cli(["-m", *TINY_1, "optimizer=sgdm,adamw", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 jobs: 1 completed, 1 running elsewhere" in proc.stdout and str(busy) in proc.stdout
    assert (busy / "summary.json").read_text() == '{"status": "running"}'


def test_joblib_two_spellings_of_one_run_never_run_at_once(tmp_path):
    """Finding 6: optimizer.lr=0.001,1e-3 ran both jobs into one folder at once and reported "1 jobs"."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *TINY_1, "optimizer.lr=0.001,1e-3", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                    f"hydra.sweep.dir={sweep}"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (log,) = sweep.rglob("run.log")
    assert log.read_text().count("epoch 1/1") == 1  # trained once
    assert "2 jobs: 1 completed, 1 running elsewhere" in proc.stdout or "2 jobs: 2 completed" in proc.stdout
