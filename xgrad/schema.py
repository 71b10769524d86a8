"""The configuration schema: every key of every group, its type and range, checked once before anything runs.

:func:`validate` resolves the composed configuration and checks it whole: unknown keys are refused wherever they
come from (a preset, ``+key=``, ``++key=``), booleans must be true or false, numbers finite and in range, and
the groups must fit together (a language model for a language dataset, an optimizer that can predict when
``predict=true``). The first problem ends the run with one line naming the key, the value and what is accepted
(:class:`~xgrad.errors.ConfigError`, exit 2).

Where the rules live: the top-level keys, the logger and the datasets are declared here (in xgrad.hparams
terms); an optimizer's hyperparameters in its registry entry (xgrad/optim/factory.py ``OPTIMIZERS``, each a
``Param`` paired with its default, with the entry's per-key ``checks`` and ``prediction``), a model's in its
``register_model`` call (xgrad/models, with the task it serves), a schedule's in ``SCHEDULES``
(xgrad/schedulers.py). The schema asks those registries, so a new optimizer, model or schedule declares its keys
once, where it is defined, and the schema checks them.

Why one validation module rather than Hydra structured configs: it sees the configuration exactly as it will
run (after presets, interpolations such as ``${lr_table.${optimizer.name}}`` and ``++`` additions, which
bypass structured configs' struct mode), it checks ranges and cross-group rules and not only types, and its
errors are one line in the suite's own words rather than Hydra's multi-line composition errors.

When: :class:`CheckConfig`, a Hydra callback (``hydra.callbacks.check_config`` in conf/config.yaml), runs
:func:`validate` after Hydra composed the configuration and before it makes the run folder or reads any data;
for a multirun it checks every job of the grid before the first one starts. The trainer validates again
(``train(cfg, folder)`` is also called directly), which costs milliseconds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from xgrad.data.ptb import DEMO_TEXT_MIN_VOCAB
from xgrad.errors import ConfigError
from xgrad.hparams import (
    Bool,
    Choice,
    Float,
    Int,
    Nullable,
    Param,
    Str,
    StrList,
    Table,
    show,
    unknown_key,
)
from xgrad.identity import PRESET_TABLES
from xgrad.predict import PREDICTION_METHODS

__all__ = ["DATASETS", "LOGGER", "TOP", "CheckConfig", "DatasetSpec", "validate"]

Rule = Callable[[dict[str, Any]], "str | None"]

# ----------------------------------------------------------------------------------- top level

TOP: dict[str, Param] = {
    "predict": Bool(),
    "predict_steps": Float(ge=0),
    "predict_weight_decay": Bool(),
    "predict_method": Choice(*PREDICTION_METHODS),
    "prediction_error_every": Int(ge=0),
    "seed": Int(ge=0),
    "epochs": Int(ge=1),
    "batch_size": Int(ge=1),
    "grad_accum": Int(ge=1),
    "grad_clip": Nullable(Float(gt=0)),
    "label_smoothing": Float(ge=0, lt=1),
    "val_size": Int(ge=0),
    "train_subset": Nullable(Int(ge=1)),
    "data_root": Str(),
    "device": Choice("auto", "cpu", "cuda"),
    "threads": Nullable(Int(ge=1)),
    "compile": Bool(),
    "resume": Bool(),
    "eval_batch_size": Int(ge=1),
    "reduced_scale": Bool(),
    "progress": Choice("auto", "bar", "line"),
    "precision": Choice("auto", "fp32", "bf16", "fp16"),
    "channels_last": Choice("auto", True, False),
    "deterministic": Bool(),
    # Per-optimizer tables of the presets, read only through interpolations (optimizer.lr: ${lr_table.${...}}).
    **{name: Table() for name in PRESET_TABLES},
}
#: Top-level keys a configuration may leave out (the code has a default, or only presets set them).
OPTIONAL = {"precision", "channels_last", "deterministic", "threads", *PRESET_TABLES}
GROUPS = ("dataset", "model", "optimizer", "scheduler")  # required; ``logger`` is optional

# ----------------------------------------------------------------------------------- logger

LOGGER: dict[str, Any] = {
    "trackers": {"wandb": Bool(), "tensorboard": Bool()},
    "mode": Choice("online", "offline", "disabled"),
    "project": Str(),
    "entity": Nullable(Str()),
    "group": Nullable(Str()),
    "name": Nullable(Str()),
    "tags": StrList(),
    "log_dir": Str(),
}

# ----------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset option: the task it serves, its keys beyond ``name`` and ``task``, and rules that involve other
    keys of the configuration (``rule(cfg) -> error text or None`` on the whole resolved configuration)."""

    task: str
    hyperparameters: dict[str, Param] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()


def _demo_text_splits_fit(cfg: dict[str, Any]) -> str | None:
    # batchify needs at least 2 tokens per column; train_subset takes the first N training tokens.
    ds = cfg["dataset"]
    n_train = min(ds["n_train"], cfg["train_subset"] or ds["n_train"])
    for key, n, columns, column_key in (
        ("n_train", n_train, cfg["batch_size"], "batch_size"),
        ("n_valid", ds["n_valid"], ds["eval_batch_size"], "dataset.eval_batch_size"),
        ("n_test", ds["n_test"], ds["test_batch_size"], "dataset.test_batch_size"),
    ):
        if n < 2 * columns:
            return (f"invalid dataset.{key}={ds[key]!r}: accepted at least 2 x {column_key} = {2 * columns} "
                    f"tokens{' (after train_subset)' if key == 'n_train' else ''} (2 tokens per column)")  # fmt: skip
    if cfg["train_subset"] is not None and cfg["train_subset"] > ds["n_train"]:
        return f"invalid train_subset={cfg['train_subset']!r}: accepted null or 2 to dataset.n_train={ds['n_train']}"
    return None


def _no_channels_last(cfg: dict[str, Any]) -> str | None:
    # channels_last is a memory format of 4-d image tensors; a language model has none (auto resolves to off).
    if cfg.get("channels_last") is True:
        return (f"invalid channels_last=true for dataset {cfg['dataset']['name']} (task language_model): it has no "
                "image tensors; accepted auto or false")  # fmt: skip
    return None


_LANGUAGE = {"bptt": Int(ge=1), "eval_batch_size": Int(ge=1), "test_batch_size": Int(ge=1),
             "eval_window_tokens": Int(ge=1)}  # fmt: skip

DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("classification", {"download": Bool()}),
    "cifar100": DatasetSpec("classification", {"download": Bool()}),
    "demo_images": DatasetSpec("classification", {"n_train": Int(ge=1), "n_test": Int(ge=1), "data_seed": Int(ge=0)}),
    "ptb": DatasetSpec("language_model", {"download": Bool(), **_LANGUAGE}, rules=(_no_channels_last,)),
    "demo_text": DatasetSpec(
        "language_model",
        {
            "n_train": Int(ge=2),
            "n_valid": Int(ge=2),
            "n_test": Int(ge=2),
            "vocab_size": Int(ge=DEMO_TEXT_MIN_VOCAB),
            "data_seed": Int(ge=0),
            **_LANGUAGE,
        },
        rules=(_demo_text_splits_fit, _no_channels_last),
    ),
}

_OPTIONAL_DATASET_KEYS = {"download", "data_seed", "eval_window_tokens"}  # the code has defaults for these
_KIND = {"classification": "an image model", "language_model": "a language model"}

# ----------------------------------------------------------------------------------- checking


def validate(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for the first key of ``cfg`` that the schema does not declare or accept.

    ``cfg`` is a composed configuration (with or without Hydra's ``hydra`` node, which is not checked).
    """
    values = resolve(cfg)
    _check_group("", values, TOP, "the top level", extra=(*GROUPS, "logger"))
    for key in [k for k in TOP if k not in OPTIONAL] + list(GROUPS):
        if key not in values:
            accepted = TOP[key].accepted if key in TOP else f"a {key} (choose one with {key}=NAME)"
            raise ConfigError(f"missing key {key}: accepted {accepted}")
    _check_dataset(values)
    _check_model(values)
    _check_optimizer(values)
    _check_scheduler(values["scheduler"])
    if values.get("logger") is not None:
        _check_group("logger.", _mapping("logger", values["logger"]), LOGGER, "logger")
    if values["val_size"] and values["dataset"]["task"] == "language_model":
        raise ConfigError(f"invalid val_size={values['val_size']!r} for a language model: accepted 0 (the corpus "
                          "has its own validation split, which is used for model selection)")  # fmt: skip


def resolve(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` as plain values with every interpolation resolved (without ``hydra``); a key that cannot be
    resolved is a :class:`ConfigError` naming it."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    keys = [k for k in cfg if k != "hydra"]
    try:
        values = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raw: Any = OmegaConf.to_container(cfg, resolve=False)
        for part in key.split("."):
            raw = raw.get(part) if isinstance(raw, dict) else None
        shown = f"={raw}" if isinstance(raw, str) else ""
        hint = f" (set it: {key}=VALUE)" if key != "?" else ""
        raise ConfigError(f"cannot resolve {key}{shown}: {str(e).splitlines()[0]}{hint}") from e
    assert isinstance(values, dict)
    return values


def _check_group(prefix: str, values: Mapping[str, Any], params: Mapping[str, Any], where: str,
                 extra: tuple[str, ...] = ()) -> None:  # fmt: skip
    """Check ``values`` against ``params`` (nested mappings are sub-groups); keys in ``extra`` are skipped."""
    for key, value in values.items():
        if key in extra:
            continue
        if key not in params:
            raise ConfigError(unknown_key(prefix + key, value, sorted([*params, *extra]), where))
        if isinstance(params[key], Mapping):
            _check_group(f"{prefix}{key}.", _mapping(prefix + key, value), params[key], prefix + key)
            continue
        error = params[key].error(prefix + key, value)
        if error:
            raise ConfigError(error)


def _mapping(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"invalid {key}={show(value)}: accepted a group of keys ({key}.KEY=VALUE)")
    return value


def _name(group: str, values: Mapping[str, Any], known: Mapping[str, Any]) -> str:
    name = values.get("name")
    if name not in known:
        raise ConfigError(f"invalid {group}.name={show(name)}: accepted one of {', '.join(sorted(known))}")
    return name


def _check_dataset(cfg: dict[str, Any]) -> None:
    ds = _mapping("dataset", cfg["dataset"])
    name = _name("dataset", ds, DATASETS)
    spec = DATASETS[name]
    params = {"name": Str(), "task": Choice(spec.task), **spec.hyperparameters}
    _check_group("dataset.", ds, params, f"dataset {name}")
    missing = [k for k in ("task", *spec.hyperparameters) if k not in ds and k not in _OPTIONAL_DATASET_KEYS]
    if missing:
        raise ConfigError(
            f"missing key dataset.{missing[0]} for dataset {name}: accepted {params[missing[0]].accepted}"
        )
    for rule in spec.rules:
        error = rule(cfg)
        if error:
            raise ConfigError(error)


def _check_model(cfg: dict[str, Any]) -> None:
    from xgrad.models import MODELS

    model = _mapping("model", cfg["model"])
    name = _name("model", model, MODELS)
    spec = MODELS[name]
    task, dataset = cfg["dataset"]["task"], cfg["dataset"]["name"]
    if spec.task != task:
        fitting = sorted(n for n, s in MODELS.items() if s.task == task)
        raise ConfigError(f"model={name} is {_KIND.get(spec.task, spec.task)}; dataset {dataset} needs "
                          f"{_KIND.get(task, task)}: one of {', '.join(fitting)}")  # fmt: skip
    hp = {k: v for k, v in model.items() if k != "name" and v is not None}  # null: the model's default
    _check_group("model.", hp, spec.hyperparameters, f"model {name}")
    for rule in spec.rules:
        error = rule(hp)
        if error:
            raise ConfigError(f"model={name}: {error}")


def _check_optimizer(cfg: dict[str, Any]) -> None:
    from xgrad.optim import OPTIMIZERS

    optimizer = _mapping("optimizer", cfg["optimizer"])
    name = _name("optimizer", optimizer, OPTIMIZERS)
    spec = OPTIMIZERS[name]
    declared = {k for s in OPTIMIZERS.values() for k in s.hyperparameters}
    # null means "the optimizer's default", also for a key this optimizer lacks (the presets' per-optimizer
    # tables give SGD eps: null); a name no optimizer declares is still a typo.
    hp = {k: v for k, v in optimizer.items() if k != "name" and (v is not None or k not in declared)}
    _check_group("optimizer.", hp, spec.params, f"optimizer {name}")
    for key, check, text in spec.checks:
        if key in hp and not check(hp[key]):
            raise ConfigError(f"invalid optimizer.{key}={show(hp[key])} for optimizer {name}: accepted {text}")
    method = cfg.get("predict_method", "auto")
    if not (cfg["predict"] and cfg["predict_steps"] > 0):
        return
    if method != "extrapolate" and not spec.can_predict:
        predictable = [n for n, s in OPTIMIZERS.items() if s.can_predict]
        raise ConfigError(
            f"predict=true with optimizer={name!r}: plain SGD (momentum 0) has no update direction for a rule to "
            f"predict from; use predict_method=extrapolate, one of {predictable}, or predict=false"
        )
    if method == "rule" and spec.prediction != "rule":
        raise ConfigError(
            f"predict_method=rule with optimizer={name!r}: it has no prediction rule (only "
            f"{[n for n, s in OPTIMIZERS.items() if s.prediction == 'rule']} have); use predict_method=auto or "
            "extrapolate"
        )


def _check_scheduler(scheduler: Any) -> None:
    from xgrad.schedulers import COMMON, SCHEDULES

    scheduler = _mapping("scheduler", scheduler)
    name = _name("scheduler", scheduler, SCHEDULES)
    # A preset sets the keys of its own schedule (milestones for multistep); with another schedule chosen on
    # the command line (experiment=cifar10_resnet34 scheduler=cosine) they remain, unused: accepted when valid
    # for a schedule that declares them. A key no schedule declares is a typo.
    params = {k: p for spec in SCHEDULES.values() for k, p in spec.hyperparameters.items()}
    params.update({**COMMON, **SCHEDULES[name].hyperparameters})
    _check_group("scheduler.", scheduler, params, f"scheduler {name} (and the other schedules)")


# ----------------------------------------------------------------------------------- before Hydra starts a job


def _refuse(errors: list[str]) -> None:
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


class CheckConfig(Callback):
    """Hydra callback: validate the configuration before the run folder exists and before any data is read.

    A single run is checked in ``on_run_start`` (Hydra calls it after composing and before ``run_job`` makes
    the folder); a multirun of Hydra's basic sweeper in ``on_multirun_start``, every job of the grid, before
    the sweep folder or any job exists. A bad value prints one line per distinct problem and exits 2. (Hydra
    turns a callback's exceptions into warnings, so this exits itself.)
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            validate(config)
        except ConfigError as e:
            _refuse([str(e)])

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        grid = _grid(config)
        if grid is None:  # another sweeper (e.g. Optuna): each job is checked as it starts
            return
        from hydra.core.global_hydra import GlobalHydra

        jobs, swept = grid
        loader = GlobalHydra.instance().config_loader()
        problems: dict[str, list[list[str]]] = {}
        for job in jobs:
            try:
                job_cfg = loader.load_sweep_config(config, list(job))
            except Exception as e:  # a job that cannot be composed: Hydra's words, before any folder exists
                _refuse([f"{str(e).strip()} (job {' '.join(job)})"])
            try:
                validate(job_cfg)
            except ConfigError as e:
                problems.setdefault(str(e), []).append(job)
        lines = []
        for error, bad in problems.items():
            example = ",".join(o for o in bad[0] if o.split("=", 1)[0].lstrip("+~") in swept)
            where = (
                f"all {len(jobs)} jobs" if len(bad) == len(jobs) else f"{len(bad)} of {len(jobs)} jobs, e.g. {example}"
            )
            lines.append(f"{error} ({where}; none was started)")
        if lines:
            _refuse(lines)


_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def _grid(config: DictConfig) -> tuple[list[list[str]], set[str]] | None:
    """The override lists of every job of a basic-sweeper multirun, as the sweeper will expand them, and the
    swept keys; None for another sweeper."""
    if OmegaConf.select(config, "hydra.sweeper._target_") != _BASIC_SWEEPER:
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.params
    params = OmegaConf.to_container(params) if params is not None else {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    overrides = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader()).parse_overrides(arguments)
    (jobs,) = BasicSweeper.split_arguments(overrides, None)
    return jobs, {o.get_key_element().lstrip("+~") for o in overrides if o.is_sweep_override()}
