"""Finding run folders, reading and validating them, and putting the usable runs into one DataFrame.

A run folder is any folder holding ``summary.json``; beside it ``metrics.csv`` (one row per epoch) and
``config.yaml`` (the resolved configuration; ``.hydra/config.yaml`` in folders of older versions). Only
``completed`` and ``diverged`` runs are used; everything else (failed, still running or stopped, unreadable,
wrong schema) becomes a :class:`Skipped` entry with the reason. Seeds are grouped, and runs paired with their
baselines, by their identity (``config_id``, ``pair_id``): derived from the recorded resolved configuration as
xgrad.identity defines it now, else as the run's summary recorded it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from xgrad.identity import PREDICTION_KEYS, config_id, identity, pair_id
from xgrad.rundir import CONFIG, METRICS, SCHEMA_VERSION, SUMMARY

from .labels import default_prediction

__all__ = [
    "Collection",
    "ReportError",
    "Run",
    "Skipped",
    "collect",
    "find_run_folders",
    "read_folder",
    "runs_frame",
    "split_overrides",
    "validate",
]

USED_STATUSES = ("completed", "diverged")
REQUIRED_KEYS = ("status", "dataset", "model", "optimizer", "predict", "predict_steps", "seed")
# Override keys that are columns of their own (or, for seed, what a group averages over), not part of the variant.
NON_VARIANT_KEYS = {"seed", "optimizer", "predict", "predict_steps", "dataset", "model"}
# How a run predicts, beyond on/off and s: not part of pair_id, so they name variants only where runs differ in them.
PREDICTION_ONLY = tuple(k for k in PREDICTION_KEYS if k not in ("predict", "predict_steps"))
# Those that change what a predicted run computes, at their defaults (conf/config.yaml; a config that does not
# record one, e.g. an older or W&B-only one, ran it at the default). prediction_error_every only measures.
FLAVOUR_DEFAULTS: dict[str, Any] = {"predict_method": "auto", "predict_weight_decay": False}


class ReportError(Exception):
    """A problem with the report's inputs that the user must fix (the CLI exits with code 2)."""


@dataclass
class Run:
    """One usable run: its summary, its per-epoch metrics and its config (empty when it has no .hydra folder)."""

    source: str
    summary: dict[str, Any]
    metrics: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)
    mtime: float = 0.0  # when summary.json was written; decides between duplicates of one seed

    @property
    def metric(self) -> str:
        """``acc`` (classification) or ``ppl`` (language models)."""
        return metric_of(self.summary) or "acc"


@dataclass
class Skipped:
    """A run folder (or W&B run) left out of the report, and why."""

    source: str
    reason: str


@dataclass
class Collection:
    """The runs a report is made of, and the ones it leaves out."""

    runs: list[Run] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def extend(self, other: Collection) -> None:
        self.runs += other.runs
        self.skipped += other.skipped


# ----------------------------------------------------------------------------------- finding and reading


def find_run_folders(root: Path) -> list[Path]:
    """Every folder under ``root`` (recursively, ``root`` included) that holds ``summary.json``."""
    if not root.exists():
        raise ReportError(f"{root}: no such folder")
    if root.is_file():
        root = root.parent if root.name == SUMMARY else root
        if root.is_file():
            raise ReportError(f"{root}: not a folder (give the folder that holds the runs)")
    folders = sorted({p.parent for p in root.rglob(SUMMARY) if p.is_file()})
    if not folders:
        raise ReportError(
            f"{root}: no summary.json found (a run folder is any folder holding summary.json, written by "
            "python -m xgrad.run; give the sweep or outputs folder)"
        )
    return folders


def read_folder(folder: Path) -> Run | Skipped:
    """Read one run folder; any unreadable file makes it a :class:`Skipped` with the reason."""
    source = str(folder)
    try:
        summary = json.loads((folder / SUMMARY).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return Skipped(source, f"corrupt: unreadable summary.json ({type(e).__name__}: {e})")
    metrics = pd.DataFrame()
    if (folder / METRICS).exists():
        try:
            metrics = pd.read_csv(folder / METRICS)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            return Skipped(source, f"corrupt: unreadable metrics.csv ({type(e).__name__}: {e})")
    elif isinstance(summary, dict) and summary.get("status") == "completed":
        return Skipped(source, "corrupt: metrics.csv is missing")
    config: dict[str, Any] = {}
    # The configuration the run started with; folders of older versions have only Hydra's copy of the last launch.
    config_path = next((p for p in (folder / CONFIG, folder / ".hydra" / "config.yaml") if p.exists()), None)
    if config_path is not None:  # optional: a folder may have neither
        try:
            config = yaml.safe_load(config_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            return Skipped(source, f"corrupt: unreadable {config_path.relative_to(folder)} ({type(e).__name__})")
    mtime = (folder / SUMMARY).stat().st_mtime
    return validate(source, summary, metrics, config, mtime=mtime, resolved=config_path == folder / CONFIG)


def _current_ids(summary: dict[str, Any], config: Any) -> dict[str, str]:
    """``config_id`` and ``pair_id`` of a run's resolved configuration as xgrad.identity defines them now.

    A summary keeps the ids of the version that ran it; from its recorded configuration a run recorded when the
    identity still held the presets' tables groups with the seeds run since. Nothing (the summary's ids stay) when
    the configuration is not that run's: not a mapping, or another optimizer or dataset than the summary names.
    """
    optimizer, dataset = (config.get(k) if isinstance(config, dict) else None for k in ("optimizer", "dataset"))
    if not summary.get("config_id") or not isinstance(optimizer, dict) or not isinstance(dataset, dict):
        return {}
    if optimizer.get("name") != summary.get("optimizer") or dataset.get("name") != summary.get("dataset"):
        return {}
    ident = identity({k: v for k, v in config.items() if not str(k).startswith("_")})  # W&B adds _wandb
    return {"config_id": config_id(ident), "pair_id": pair_id(ident)}


def metric_of(summary: dict[str, Any]) -> str | None:
    """The quality metric of a run: from its task, else from the keys its summary has."""
    task = summary.get("task")
    if task == "classification":
        return "acc"
    if task == "language_model":
        return "ppl"
    for metric in ("acc", "ppl"):
        if any(k.endswith(f"_{metric}") for k in summary):
            return metric
    return None


def validate(
    source: str,
    summary: Any,
    metrics: pd.DataFrame,
    config: dict[str, Any],
    mtime: float = 0.0,
    resolved: bool = False,
) -> Run | Skipped:
    """Check one run's files against the runner's schema; return the :class:`Run`, or why it is skipped.

    ``resolved``: ``config`` is the resolved configuration the run recorded (xgrad's ``config.yaml``, W&B's run
    config), from which its ``config_id`` and ``pair_id`` are derived anew (:func:`_current_ids`).
    """
    if not isinstance(summary, dict):
        return Skipped(source, "corrupt: summary.json is not a JSON object")
    version = summary.get("schema_version")
    if version != SCHEMA_VERSION:
        return Skipped(source, f"schema mismatch: schema_version {version!r}, this report reads {SCHEMA_VERSION}")
    status = summary.get("status")
    done = f"{summary.get('epochs_done', '?')}/{summary.get('epochs', '?')} epochs"
    if status == "failed":
        return Skipped(source, f"failed: {summary.get('error') or 'no error recorded'}")
    if status in ("running", "interrupted"):
        what = "still running, or stopped without a final status" if status == "running" else "interrupted"
        return Skipped(source, f"partial (status {status}: {what}; {done})")
    if status not in USED_STATUSES:
        return Skipped(source, f"corrupt: unknown status {status!r}")
    missing = [k for k in REQUIRED_KEYS if k not in summary]
    if missing:
        return Skipped(source, f"schema mismatch: summary.json lacks {', '.join(missing)}")
    metric = metric_of(summary)
    if metric is None:
        return Skipped(source, f"schema mismatch: unknown task {summary.get('task')!r} and no acc/ppl metrics")
    problem = _check_metrics(summary, metrics, metric)
    if problem:
        return Skipped(source, f"corrupt: {problem}")
    metrics = metrics.apply(pd.to_numeric, errors="coerce") if len(metrics) else metrics
    summary = {**summary, **_current_ids(summary, config)} if resolved else summary
    return Run(source, _normalise(summary), metrics, config if isinstance(config, dict) else {}, mtime)


def _check_metrics(summary: dict[str, Any], metrics: pd.DataFrame, metric: str) -> str | None:
    """What is wrong with a run's metrics, or None. A diverged run may have no rows (it diverged in epoch 1)."""
    completed = summary["status"] == "completed"
    if completed:
        for key in (f"final_test_{metric}", f"best_test_{metric}"):
            if summary.get(key) is None:
                return f"summary.json of a completed run lacks {key}"
        if metrics.empty:
            return "metrics.csv has no rows"
    if metrics.empty:
        return None
    needed = ["epoch", "train_loss", f"test_{metric}"]
    absent = [c for c in needed if c not in metrics.columns]
    if absent:
        return f"metrics.csv lacks column(s) {', '.join(absent)}"
    done = summary.get("epochs_done")
    if completed and isinstance(done, int) and len(metrics) != done:
        return f"metrics.csv has {len(metrics)} rows but summary.json says {done} epochs were done"
    return None


def _normalise(summary: dict[str, Any]) -> dict[str, Any]:
    """Consistent types for the keys the report groups by (W&B may hand back ints as floats, etc.)."""
    out = dict(summary)
    out["predict"] = bool(out["predict"]) and str(out["predict"]).lower() != "false"
    out["predict_steps"] = float(out["predict_steps"] or 0.0) if out["predict"] else 0.0
    out["seed"] = int(out["seed"])
    out["overrides"] = out.get("overrides") or ""
    return out


def collect(roots: Iterable[Path]) -> Collection:
    """Read every run folder under ``roots`` (each must hold at least one summary.json)."""
    collection = Collection()
    seen: set[Path] = set()
    for root in roots:
        for folder in find_run_folders(Path(root)):
            if folder.resolve() in seen:  # overlapping inputs (outputs/ and outputs/sweeps/x) count once
                continue
            seen.add(folder.resolve())
            item = read_folder(folder)
            (collection.runs if isinstance(item, Run) else collection.skipped).append(item)
    return collection


def drop_duplicate_seeds(collection: Collection, scopes: Iterable[Path] = ()) -> Collection:
    """Keep one run per seed of one computation; the others are listed as skipped.

    Two passes. One configuration (``config_id``, e.g. a folder and its W&B copy): the most recently written run.
    Then, within each of ``scopes`` (a tuning study's folder; all runs outside them are one scope), runs that
    compute the same numbers under another spelling (:func:`seed_key`: ``predict_method=auto`` and ``=rule``,
    another ``prediction_error_every``): the one that measured the prediction error, then the newest. A study
    keeps its own runs: another study's equal baseline is no duplicate of them.
    """
    folders = [Path(scope).resolve() for scope in scopes]

    def scope(run: Run) -> Path | None:
        path = Path(run.source).resolve()
        return next((f for f in folders if path.is_relative_to(f)), None)

    collection = _keep_one(collection, lambda r: (*group_key(r.summary), r.summary["seed"]), lambda r: r.mtime,
                           "of this configuration", "newer, used")  # fmt: skip
    return _keep_one(collection, lambda r: (scope(r), *seed_key(r)), lambda r: (_measured(r), r.mtime),
                     "of this computation", "used: measured the prediction error, or newer")  # fmt: skip


def _keep_one(
    collection: Collection, key: Callable[[Run], tuple], rank: Callable[[Run], Any], what: str, why: str
) -> Collection:
    best: dict[tuple, Run] = {}
    for run in collection.runs:
        k = key(run)
        if k not in best or rank(run) > rank(best[k]):
            best[k] = run
    chosen = {id(run) for run in best.values()}  # identity: Run holds DataFrames, so == is not usable
    dropped = [
        Skipped(r.source, f"duplicate: seed {r.summary['seed']} {what} is also in {best[key(r)].source} ({why})")
        for r in collection.runs
        if id(r) not in chosen
    ]  # fmt: skip
    return Collection([r for r in collection.runs if id(r) in chosen], collection.skipped + dropped)


def _measured(run: Run) -> bool:
    """Whether the run measured its prediction error (xgrad.prediction_error) in some epoch."""
    return bool(run.metrics.get("prediction_error", pd.Series(dtype=float)).notna().any())


# ----------------------------------------------------------------------------------- grouping


def split_overrides(text: str) -> list[str]:
    """Split Hydra's ``override_dirname`` (``a=1,b=[2,3]``) at the commas outside brackets and quotes."""
    items, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        current += char
    items.append(current)
    return [item.strip() for item in items if item.strip()]


def extra_overrides(overrides: str) -> tuple[str, ...]:
    """The overrides that are neither the seed nor one of the report's own columns, sorted."""
    kept = []
    for item in split_overrides(overrides):
        if _key(item) not in NON_VARIANT_KEYS:
            kept.append(item)
    return tuple(sorted(kept))


def seed_key(run: Run) -> tuple:
    """What one seed of one computation is: runs with the same key computed the same numbers.

    Its baseline's identity (``pair_id``), prediction on/off, the horizon and how it predicted (method resolved:
    ``predict_method=auto`` and ``=rule`` are one computation; ``prediction_error_every`` only measures) and the
    seed; summaries without ``pair_id`` fall back to :func:`group_key`.
    """
    s = run.summary
    if s.get("pair_id"):
        return ("pair_id", s["pair_id"], s["predict"], s["predict_steps"], prediction_flavour(run), s["seed"])
    return (*group_key(s), s["seed"])


def group_key(summary: dict[str, Any]) -> tuple:
    """Every configuration choice except the seed: the runs that share it are seeds of one group.

    That is the run's identity (``config_id``, its resolved configuration, see xgrad.identity); summaries
    written before it was recorded fall back to the overrides.
    """
    if summary.get("config_id"):
        return ("config_id", summary["config_id"])
    return (
        summary["dataset"],
        summary["model"],
        summary["optimizer"],
        summary["predict"],
        summary["predict_steps"],
        extra_overrides(summary["overrides"]),
    )


def _num_layers(config: dict[str, Any]) -> int | None:
    model = config.get("model")
    layers = model.get("num_layers") if isinstance(model, dict) else None
    return int(layers) if isinstance(layers, (int, float)) and not isinstance(layers, bool) else None


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run: identity, status, final and best test metric (accuracy in %), cost, and its index.

    Column ``run`` indexes ``runs`` (for the per-epoch metrics), ``extra`` holds the non-seed overrides that
    are not columns of their own, and ``group`` names the seed group.
    """
    rows = []
    for i, run in enumerate(runs):
        s, metric = run.summary, run.metric
        scale = 100.0 if metric == "acc" else 1.0  # accuracies are fractions on disk, percentages in the report
        rows.append(
            {
                "run": i,
                "source": run.source,
                "status": s["status"],
                "metric": metric,
                "dataset": s["dataset"],
                "model": s["model"],
                "optimizer": s["optimizer"],
                "predict": s["predict"],
                "steps": s["predict_steps"],
                "seed": s["seed"],
                "extra": extra_overrides(s["overrides"]),
                "synthetic": bool(s.get("synthetic", False)),
                "reduced_scale": bool(s.get("reduced_scale", False)),
                "epochs": s.get("epochs"),
                "epochs_done": s.get("epochs_done"),
                "final": _scaled(s.get(f"final_test_{metric}"), scale),
                "best": _scaled(s.get(f"best_test_{metric}"), scale),
                "best_selected_on": s.get("best_selected_on") or "test",
                "train_epoch_seconds": _per_epoch(s.get("train_seconds"), s.get("epochs_done")),
                "peak_memory_bytes": _scaled(s.get("peak_memory_bytes"), 1.0),
                "device": str(s.get("device", "")),
                "num_layers": _num_layers(run.config),
                # its time and memory include the prediction-error measurement (xgrad.prediction_error)
                "measured_error": _measured(run),
            }
        )
    frame = pd.DataFrame(rows)
    if not frame.empty:
        kinds = list(zip(frame["dataset"], frame["model"], frame["reduced_scale"], frame["optimizer"]))
        frame["pair_id"] = [r.summary.get("pair_id") for r in runs]
        flavours = [prediction_flavour(r) for r in runs]
        frame["flavour"] = _flavour_names(frame["extra"].tolist(), frame["pair_id"].tolist(), kinds, flavours)
        frame["extra"] = _extra_by_identity(frame["extra"].tolist(), frame["pair_id"].tolist(), kinds)
        frame["group"] = [group_label(row) for row in frame.itertuples()]
    return frame


def prediction_flavour(run: Run) -> tuple[tuple[str, Any], ...] | None:
    """How a run predicted beyond on/off and the horizon (None without prediction): the method as resolved (what
    ``auto`` ran) and the other settings of ``FLAVOUR_DEFAULTS``, a setting its config does not record at its
    default."""
    if not run.summary["predict"]:
        return None
    overrides = dict(item.split("=", 1) for item in split_overrides(run.summary.get("overrides") or "") if "=" in item)
    # a folder without its config: the overrides say what was not the default
    flavour = {k: run.config.get(k, _parsed(overrides.get(k, default))) for k, default in FLAVOUR_DEFAULTS.items()}
    if run.summary.get("predict_method"):
        flavour["predict_method"] = run.summary["predict_method"]
    elif flavour["predict_method"] == "auto":  # a summary from before it recorded what auto ran
        flavour["predict_method"] = default_prediction(run.summary["optimizer"]) or "auto"
    return tuple(sorted(flavour.items()))


def _extra_by_identity(
    extras: list[tuple[str, ...]], pair_ids: list[str | None], kinds: list[tuple]
) -> list[tuple[str, ...]]:
    """The overrides that name each run's variant, made to follow identity (``pair_id``, when recorded).

    Runs of one identity (a run and its baseline, all seeds) get one name even when their overrides were spelled
    differently; runs of different identities that the same overrides name within one ``kind`` (setting and
    optimizer: a preset edited between them) get the identity's short hash added, so they are never averaged or
    paired together. Different optimizers or settings have different identities anyway and are told apart by
    their own columns. How a run predicted is no part of this name (see :func:`_flavour_names`).
    """
    own = [tuple(t for t in extra if _key(t) not in PREDICTION_ONLY) if pid else extra
           for extra, pid in zip(extras, pair_ids)]  # fmt: skip
    first: dict[str, tuple[str, ...]] = {}
    for extra, pid in zip(own, pair_ids):
        if pid:
            first.setdefault(pid, extra)
    named = [first[pid] if pid else extra for extra, pid in zip(own, pair_ids)]
    owners: dict[tuple, set[str | None]] = {}
    for extra, pid, kind in zip(named, pair_ids, kinds):
        owners.setdefault((kind, extra), set()).add(pid)
    return [
        (*extra, f"config {pid[:6]}") if pid and len(owners[(kind, extra)]) > 1 else extra
        for extra, pid, kind in zip(named, pair_ids, kinds)
    ]


def _key(override: str) -> str:
    """The key an override sets: ``+key=value`` / ``~key`` name the same key as ``key=value``."""
    return re.sub(r"^[+~]+", "", override.split("=", 1)[0])


def _flavour_names(
    extras: list[tuple[str, ...]], pair_ids: list[str | None], kinds: list[tuple], flavours: list[tuple | None]
) -> list[tuple[str, ...]]:
    """Per run, the ``key=value`` items that tell how it predicted where that is not the default.

    The default is what the optimizer's registry entry runs with ``predict_method=auto`` and the other settings at
    their defaults (for an optimizer not registered here: the one way its runs without prediction-only overrides
    predicted). Runs that predicted otherwise (``predict_method=extrapolate`` for AdamW) share their baseline's
    ``pair_id`` but are named by the settings that differ, so they are never averaged with the default's runs and
    each is compared with the shared baseline (:func:`xgrad.report.tables.row_groups`). Empty for all other runs.
    """
    by_pair: dict[tuple, list[int]] = {}
    for i, (pid, flavour) in enumerate(zip(pair_ids, flavours)):
        if pid and flavour is not None:
            by_pair.setdefault((kinds[i], pid), []).append(i)
    names: list[tuple[str, ...]] = [() for _ in extras]
    for (kind, _), members in by_pair.items():
        default = _default_flavour(kind[3], [(flavours[i], extras[i]) for i in members])
        for i in members:
            if default is not None and flavours[i] != default:
                names[i] = tuple(f"{k}={_value_text(v)}" for k, v in flavours[i] if dict(default)[k] != v)
            elif default is None:  # no default known and several ways: each is named by what differs
                differing = {k for k, _ in flavours[i] if len({dict(flavours[j])[k] for j in members}) > 1}
                names[i] = tuple(f"{k}={_value_text(v)}" for k, v in flavours[i] if k in differing)
    return names


def _default_flavour(optimizer: str, runs: list[tuple[tuple, tuple[str, ...]]]) -> tuple | None:
    """The flavour that predicting with the default settings gives ``optimizer`` (see :func:`_flavour_names`)."""
    method = default_prediction(optimizer)
    if method is not None:
        return tuple(sorted({**FLAVOUR_DEFAULTS, "predict_method": method}.items()))
    plain = {flavour for flavour, extra in runs if not any(_key(t) in FLAVOUR_DEFAULTS for t in extra)}
    everyone = {flavour for flavour, _ in runs}
    return next(iter(plain)) if len(plain) == 1 else next(iter(everyone)) if len(everyone) == 1 else None


def _parsed(value: Any) -> Any:
    return yaml.safe_load(value) if isinstance(value, str) else value


def _value_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def _per_epoch(seconds: Any, epochs: Any) -> float:
    """Training seconds per epoch (summary.json's ``train_seconds``: evaluation excluded), NaN when unknown."""
    try:
        return float(seconds) / int(epochs) if int(epochs) > 0 else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def _scaled(value: Any, scale: float) -> float:
    try:
        return float(value) * scale
    except (TypeError, ValueError):  # null, or "inf" written as a string for a non-finite value
        return float("nan")


def group_label(row: Any) -> str:
    """A readable name for a seed group, e.g. ``cifar10/resnet34/sgdm, prediction s=1, epochs=3``."""
    prediction = f"prediction s={row.steps:g}" if row.predict else "no prediction"
    return ", ".join([f"{row.dataset}/{row.model}/{row.optimizer}", prediction, *row.extra, *row.flavour])
