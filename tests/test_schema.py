"""The config schema: every key checked, with a one-line error, before any data is read or any folder made."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import CONF, TINY, make_cfg, run_cli
from xgrad.errors import ConfigError
from xgrad.trainer import train

TEXT = ["experiment=cpu_demo_text", "dataset.n_train=2000", "dataset.n_valid=400", "dataset.n_test=400", "epochs=1",
        "progress=line"]  # fmt: skip


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# Each bad value, through the Python entry point (train), must stop with a ConfigError naming the key, the value
# and what is accepted, before anything is written. Before the schema, most of these trained (silently wrong) or
# ended in a traceback.
BAD = [
    # finding 4: values that trained silently wrong
    ([*TINY, "scheduler=multistep", "scheduler.gamma=-1"], r"invalid scheduler.gamma=-1: accepted a finite number > 0"),
    ([*TINY, "scheduler=exponential", "scheduler.gamma=0"], r"invalid scheduler.gamma=0: accepted a finite number > 0"),
    ([*TINY, "scheduler=multistep", "scheduler.milestones=[-5]"],
     r"invalid scheduler.milestones=\[-5\]: accepted a list of strictly increasing integers >= 1"),
    ([*TINY, "scheduler=multistep", "scheduler.milestones=[3,2]"], r"milestones=\[3, 2\]: accepted .*increasing"),
    ([*TINY, "scheduler=multistep", "scheduler.milestones=[1.5]"], r"scheduler.milestones=\[1.5\]"),
    ([*TINY, "optimizer.lr=inf"], r"invalid optimizer.lr=inf: accepted a finite number > 0$"),
    ([*TINY, "optimizer.lr=nan"], r"invalid optimizer.lr=nan"),
    ([*TINY, "optimizer.lr=0"], r"invalid optimizer.lr=0: accepted a finite number > 0$"),
    ([*TINY, "optimizer=adam", "optimizer.amsgrad=maybe"], r"invalid optimizer.amsgrad='maybe': accepted true"),
    ([*TINY, "optimizer.nesterov=maybe"], r"invalid optimizer.nesterov='maybe': accepted true or false"),
    ([*TINY, "optimizer=adabelief", "optimizer.decoupled_weight_decay=1"], r"decoupled_weight_decay=1: accepted true"),
    ([*TINY, "predict_weight_decay=maybe"], r"invalid predict_weight_decay='maybe': accepted true or false"),
    ([*TINY, "resume=maybe"], r"invalid resume='maybe': accepted true or false"),
    ([*TINY, "compile=maybe"], r"invalid compile='maybe': accepted true or false"),
    ([*TINY, "predict=1"], r"invalid predict=1: accepted true or false"),
    ([*TINY, "predict_steps=inf"], r"invalid predict_steps=inf: accepted a finite number >= 0"),
    ([*TINY, "grad_clip=0"], r"invalid grad_clip=0: accepted null or a finite number > 0"),
    ([*TINY, "label_smoothing=1.0"], r"invalid label_smoothing=1.0: accepted a finite number >= 0 and < 1"),
    ([*TINY, "epochs=2.0"], r"invalid epochs=2.0: accepted an integer >= 1"),
    ([*TINY, "batch_size=0"], r"invalid batch_size=0: accepted an integer >= 1"),
    ([*TINY, "eval_batch_size=true"], r"invalid eval_batch_size=true: accepted an integer >= 1"),
    ([*TINY, "device=gpu"], r"invalid device='gpu': accepted one of auto, cpu, cuda"),
    ([*TINY, "scheduler.warmup_epochs=-1"], r"invalid scheduler.warmup_epochs=-1"),
    ([*TINY, "scheduler=cosine", "scheduler.min_lr_factor=2"], r"invalid scheduler.min_lr_factor=2"),
    ([*TINY, "scheduler=exponential", "scheduler.constant_epochs=-1"], r"invalid scheduler.constant_epochs=-1"),
    ([*TINY, "optimizer=adam", "optimizer.betas=[0.9,1.5]"],
     r"invalid optimizer.betas\[1\]=1.5: accepted a finite number >= 0 and < 1$"),
    ([*TINY, "optimizer.momentum=1.0"], r"invalid optimizer.momentum=1.0: accepted a finite number > 0 and < 1$"),
    ([*TINY, "optimizer=sgd", "+optimizer.momentum=0.9"], r"momentum=0.9 for optimizer sgd: accepted 0 \(use 'sgdm'"),
    ([*TINY, "logger=wandb", "logger.mode=sometimes"], r"invalid logger.mode='sometimes': accepted one of online"),
    ([*TINY, "logger=wandb", "logger.trackers.wandb=maybe"], r"invalid logger.trackers.wandb='maybe'"),
    # finding 5: typos, also when added with + or ++
    ([*TINY, "++lable_smoothing=0.5"], r"unknown key lable_smoothing=0.5 \(did you mean label_smoothing\?\)"),
    ([*TINY, "+lable_smoothing=0.5"], r"unknown key lable_smoothing=0.5"),
    ([*TINY, "++dataset.n_trian=10"],
     r"unknown key dataset.n_trian=10 \(did you mean dataset.n_train\?\): the keys of dataset demo_images are"),
    ([*TINY, "++optimizer.weight_decya=0.1"], r"unknown key optimizer.weight_decya=0.1"),
    ([*TINY, "++scheduler.milestone=[1]"], r"unknown key scheduler.milestone=\[1\] \(did you mean"),
    ([*TINY, "++scheduler.gamma=-1"], r"invalid scheduler.gamma=-1"),  # another schedule's key: checked, unused
    ([*TINY, "++model.depth=20"], r"unknown key model.depth=20: the keys of model resnet20 are \(none\)"),
    ([*TINY, "logger=wandb", "++logger.projcet=x"], r"unknown key logger.projcet='x' \(did you mean logger.project"),
    ([*TINY, "++optimizer.typo=null"], r"unknown key optimizer.typo=null"),
    # finding 7 (config part): one line instead of a traceback
    ([*TEXT, "dataset.vocab_size=5"], r"invalid dataset.vocab_size=5: accepted an integer >= 13"),
    ([*TEXT, "dataset.vocab_size=12"], r"invalid dataset.vocab_size=12"),  # numpy's ValueError before
    ([*TEXT, "dataset.n_test=1"], r"invalid dataset.n_test=1: accepted an integer >= 2"),
    ([*TEXT, "dataset.n_test=3", "dataset.test_batch_size=2"], r"invalid dataset.n_test=3: accepted at least 2 x"),
    ([*TEXT, "batch_size=1500"], r"invalid dataset.n_train=2000: accepted at least 2 x batch_size = 3000"),
    ([*TEXT, "train_subset=5000"], r"invalid train_subset=5000: accepted null or 2 to dataset.n_train=2000"),
    ([*TEXT, "dataset.bptt=0"], r"invalid dataset.bptt=0: accepted an integer >= 1"),
    ([*TEXT, "model.tie_weights=true", "model.embedding_size=64"], r"model=lstm: invalid tie_weights=true"),
    ([*TEXT, "model.dropout=1.0"], r"invalid model.dropout=1.0: accepted a finite number >= 0 and < 1"),
    ([*TEXT, "val_size=10"], r"invalid val_size=10 for a language model"),
    ([*TINY, "scheduler=multistep", "scheduler.milestones=[abc]"], r"invalid scheduler.milestones=\['abc'\]"),
    ([*TINY, "dataset.n_train=0"], r"invalid dataset.n_train=0: accepted an integer >= 1"),
    ([*TINY, "dataset.task=language_model"], r"invalid dataset.task='language_model': accepted one of classification"),
    ([*TINY, "predict_method=guess"], r"invalid predict_method='guess': accepted one of auto, rule, extrapolate"),
    ([*TINY, "prediction_error_every=-1"], r"invalid prediction_error_every=-1: accepted an integer >= 0"),
    ([*TINY, "optimizer=nadam", "predict=true", "predict_method=rule"], r"predict_method=rule with optimizer='nadam'"),
    # groups that do not fit together
    ([*TINY, "model=lstm"], r"model=lstm is a language model; dataset demo_images needs an image model: one of"),
    ([*TEXT, "model=resnet20"], r"model=resnet20 is an image model; dataset demo_text needs a language model"),
    ([*TINY, "optimizer=sgd", "predict=true"], r"predict=true with optimizer='sgd': .* use predict_method=extrapolate"),
    ([*TEXT, "optimizer.lr=${lr_table.nope}"], r"cannot resolve optimizer.lr=\$\{lr_table.nope\}: .* \(set it: optim"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o[-2:]) for o, _ in BAD])
def test_bad_value_is_refused_before_anything_is_written(tmp_path, overrides, message):
    folder = tmp_path / "run"
    with pytest.raises(ConfigError, match=message) as error:
        train(make_cfg(overrides), folder)
    assert "\n" not in str(error.value)
    assert not folder.exists()


def test_a_constraint_only_the_optimizer_checks_is_still_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"optimizer=sgdm: Nesterov momentum requires a momentum and zero damp"):
        train(make_cfg([*TINY, "optimizer.nesterov=true", "optimizer.dampening=0.5"]), tmp_path / "run")


# ----------------------------------------------------------------------------------- the schema fits conf/


def _compose_all(combinations: list[list[str]]) -> list[tuple[list[str], object]]:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return [(overrides, compose("config", overrides=overrides)) for overrides in combinations]


def _sets_optimizer_keys(preset: str) -> bool:
    """Whether a preset (or one it builds on) sets optimizer keys, e.g. per-optimizer lr and eps tables."""
    text = (CONF / "experiment" / f"{preset}.yaml").read_text()
    parents = [p for p in _options("experiment") if p != preset and f"- {p}\n" in text]
    return "\noptimizer:" in text or any(_sets_optimizer_keys(p) for p in parents)


def test_every_shipped_configuration_passes_the_schema():
    """The schema accepts all of conf/, so it cannot drift from it: every option of every group (each dataset
    with each model of its task), every preset, every preset that sets optimizer keys with every optimizer,
    every schedule under presets that set another schedule's keys, and every named sweep."""
    from xgrad.models import MODELS
    from xgrad.schema import DATASETS, validate

    assert set(_options("dataset")) == set(DATASETS) and set(_options("model")) <= set(MODELS)
    combos = [[f"{g}={o}"] for g in ("optimizer", "scheduler", "logger", "sweep", "experiment") for o in _options(g)]
    combos += [["logger=[wandb,tensorboard]"]]
    combos += [[f"dataset={d}", f"model={m}"] for d in DATASETS for m in MODELS if DATASETS[d].task == MODELS[m].task]
    presets = [p for p in _options("experiment") if _sets_optimizer_keys(p)]
    assert "ptb_awd_lstm_2layer" in presets and "cpu_ptb_awd_lstm" in presets
    combos += [[f"experiment={p}", f"optimizer={o}"] for p in presets for o in _options("optimizer")]
    combos += [[f"experiment={p}", f"scheduler={s}"] for p in ("cifar10_resnet34", "ptb_zaremba_small")
               for s in _options("scheduler")]  # fmt: skip
    for overrides, cfg in _compose_all(combos):
        try:
            validate(cfg)
        except ConfigError as e:
            pytest.fail(f"{' '.join(overrides)}: {e}")


# ----------------------------------------------------------------------------------- the command line


def _nothing_made(cwd: Path) -> bool:
    return not (cwd / "outputs").exists() and not (cwd / "sweep").exists()


def test_cli_bad_lr_is_reported_before_the_missing_dataset(tmp_path):
    """Finding 10: the lr error comes first, with no download attempted and no folder made."""
    proc = run_cli(["optimizer.lr=-0.5", f"data_root={tmp_path / 'nodata'}", "dataset.download=false"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: invalid optimizer.lr=-0.5: accepted a finite number > 0"]
    assert _nothing_made(tmp_path) and not (tmp_path / "nodata").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dataset.vocab_size=5"], "error: invalid dataset.vocab_size=5: accepted an integer >= 13"),
        (["dataset.n_test=1"], "error: invalid dataset.n_test=1: accepted an integer >= 2"),
        (["++dataset.n_trian=10"], "error: unknown key dataset.n_trian=10 (did you mean dataset.n_train?)"),
    ],
)
def test_cli_bad_dataset_value_is_one_line_and_leaves_nothing(tmp_path, args, message):
    """Findings 5 and 7: a one-line error, exit 2, and no run folder (Hydra has not made it yet)."""
    proc = run_cli(["experiment=cpu_demo_text", *args], tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(message) and "Traceback" not in proc.stderr
    assert _nothing_made(tmp_path)


def test_cli_multirun_refuses_a_bad_grid_before_any_job(tmp_path):
    args = ["-m", *TINY, "epochs=1", "optimizer.lr=0.1,-1,0.05", "scheduler.warmup_epochs=0,-2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = sorted(proc.stderr.strip().splitlines())
    assert lines == [
        "error: invalid optimizer.lr=-1: accepted a finite number > 0 (2 of 6 jobs, e.g. "
        "optimizer.lr=-1,scheduler.warmup_epochs=0; none was started)",
        "error: invalid scheduler.warmup_epochs=-2: accepted a finite number >= 0 (2 of 6 jobs, e.g. "
        "optimizer.lr=0.1,scheduler.warmup_epochs=-2; none was started)",
    ]
    assert "Launching" not in proc.stdout + proc.stderr and _nothing_made(tmp_path)
