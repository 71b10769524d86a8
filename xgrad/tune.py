"""``python -m xgrad.tune``: the learning-rate tuning protocol, one command over Hydra multiruns.

For every arm (optimizer, prediction horizon s; s = 0 is no prediction) the lr is tuned on a held-out validation
split, then the final seeds run at the chosen lr and are judged on test:

1. *tune*: lr = preset lr x each factor (default 1/3, 1, 3), ``tune_seeds`` (default seed 0), every arm;
2. *select*: per arm, the lr with the best mean final validation metric over the tune seeds (see :func:`select_lr`);
   where it is the grid's smallest or largest lr, the grid grows one step (the grid's outer ratio) that way and
   step 2 repeats, at most ``extend`` times per side (default 2), so that a choice is an optimum, not a bound;
3. *final*: ``seeds`` (default 0, 1, 2) at the chosen lr. A tune seed at the chosen lr is the same configuration
   as that final seed, so it is the same run folder and is not run twice.

All runs of a study go into one folder (``dir``, default ``outputs/tune/<study>``), which also gets
``tuning.json`` (the protocol and the choices) for ``python -m xgrad.report``. Relaunching the same command skips
completed runs and resumes partial ones, like every sweep. Examples::

    python -m xgrad.tune experiment=cpu_demo val_size=500 optimizers=[sgdm,adamw]
    python -m xgrad.tune experiment=cpu_cifar10_resnet20 val_size=1000 study=cifar10 \\
        hydra/launcher=joblib hydra.launcher.n_jobs=2 threads=1

The driver's own keys are listed in :data:`DRIVER_KEYS`; every other ``key=value`` is passed to each
``python -m xgrad.run -m`` it launches.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xgrad.errors import ConfigError
from xgrad.rundir import atomic_write

__all__ = ["DRIVER_KEYS", "GridPoint", "Selection", "Study", "main", "parse_args", "select_lr"]

STUDY_FILE = "tuning.json"
# The driver's keys and their defaults; everything else on the command line goes to each multirun.
DRIVER_KEYS: dict[str, Any] = {
    "study": "default",  # the study's name: its folder is outputs/tune/<study> unless dir= is given
    "dir": None,  # the study folder (all its runs and tuning.json)
    "optimizers": ["sgdm", "adamw"],
    "steps": [0, 1],  # prediction horizons s per arm; 0 = without prediction
    "factors": [1 / 3, 1, 3],  # the lr grid, as multiples of the preset's lr
    "tune_seeds": [0],  # seeds of the tuning runs (the lr is chosen on their mean validation metric)
    "seeds": [0, 1, 2],  # seeds of the final runs at the chosen lr
    "extend": 2,  # at most this many more lrs per arm and side when the choice lands on the grid's edge
    "phase": "all",  # tune (grid only), final (needs a finished grid), all, plan (print what would run)
}
PHASES = ("tune", "final", "all", "plan")
REL_TOL = 1e-9  # two validation means this close are a tie
LOG_TOL = 1e-2  # two lrs this close in |log(lr / preset)| are equally near the preset (3-digit grid lrs)


# ----------------------------------------------------------------------------------- selection


@dataclass
class GridPoint:
    """One lr of an arm's grid: the final validation metric per tune seed (None: diverged or not finite)."""

    lr: float
    values: dict[int, float | None] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)  # tune seeds with no finished run (failed, running, absent)

    @property
    def diverged(self) -> bool:
        return any(v is None or not math.isfinite(v) for v in self.values.values())

    @property
    def mean(self) -> float:
        """Mean validation metric over the tune seeds; NaN when a seed diverged or is missing."""
        if self.diverged or self.missing or not self.values:
            return math.nan
        return sum(self.values.values()) / len(self.values)


@dataclass
class Selection:
    """The outcome for one arm: the chosen lr (None when none could be chosen) and why."""

    lr: float | None
    reason: str
    at_edge: bool = False  # the chosen lr is the grid's smallest or largest: the optimum may lie outside


def select_lr(grid: list[GridPoint], preset_lr: float, higher_is_better: bool) -> Selection:
    """Choose an arm's lr: the best mean final validation metric over the tune seeds.

    Rules, in order: an lr with a missing tune run makes the arm undecided (finish the grid first); an lr at which
    any tune seed diverged is never chosen (it is unsafe, whatever the other seeds did); among the rest the best
    mean wins (higher accuracy, lower perplexity); a tie (relative difference below 1e-9) goes to the lr closest
    to the preset on a log scale (distances within 1% count as equal, so the 3-digit rounding of the grid's lrs
    does not decide), then to the smaller lr. When every lr diverged nothing is chosen.
    """
    if not grid:
        return Selection(None, "empty grid")
    missing = [f"lr={p.lr:g} seed {s}" for p in grid for s in p.missing]
    if missing:
        return Selection(None, "grid not finished: " + ", ".join(missing))
    usable = [p for p in grid if not p.diverged]
    if not usable:
        return Selection(None, "every lr of the grid diverged: widen the grid downwards (factors=...)")
    sign = 1.0 if higher_is_better else -1.0
    top = max(sign * p.mean for p in usable)
    tied = [p for p in usable if math.isclose(sign * p.mean, top, rel_tol=REL_TOL, abs_tol=0.0)]
    # Distance from the preset on a log scale, equal within the grid's 3-digit rounding (x1/3 of 0.1 is 0.0333,
    # 1.0996 from it; x3 is 0.3, 1.0986): else the rounding, not "the smaller lr", would break a symmetric tie.
    distance = {p.lr: abs(math.log(p.lr / preset_lr)) for p in tied}
    nearest = min(distance.values())
    chosen = min((p for p in tied if distance[p.lr] <= nearest + LOG_TOL), key=lambda p: p.lr)
    lrs = sorted(p.lr for p in grid)
    edge = len(lrs) > 1 and chosen.lr in (lrs[0], lrs[-1])
    reason = f"best validation of {len(usable)} lrs" + (
        f" (tie of {len(tied)}: nearest the preset)" if len(tied) > 1 else ""
    )
    diverged = [f"{p.lr:g}" for p in grid if p.diverged]
    if diverged:
        reason += f"; diverged at lr {', '.join(diverged)}"
    return Selection(chosen.lr, reason, edge)


def grid_lrs(preset_lr: float, factors: list[float]) -> list[float]:
    """The lr grid: preset x factor, three significant digits (so folder names stay readable), sorted, unique."""
    return sorted({float(f"{preset_lr * f:.3g}") for f in factors})


# ----------------------------------------------------------------------------------- the study on disk


@dataclass
class Arm:
    """One (optimizer, horizon) arm of a study, its grid's results and its choice."""

    optimizer: str
    steps: float
    preset_lr: float
    lrs: list[float]
    grid: list[GridPoint] = field(default_factory=list)
    selection: Selection | None = None

    @property
    def predict(self) -> bool:
        return self.steps > 0

    def overrides(self) -> list[str]:
        """The overrides that make this arm (s = 1 is the default horizon, so it is not spelled out)."""
        out = [f"optimizer={self.optimizer}", f"predict={str(self.predict).lower()}"]
        if self.predict and self.steps != 1:
            out.append(f"predict_steps={self.steps:g}")
        return out


@dataclass
class Study:
    """A tuning study: its protocol (the overrides every run shares, the grid, the seeds) and its arms."""

    overrides: list[str]
    factors: list[float]
    tune_seeds: list[int]
    seeds: list[int]
    metric: str  # acc | ppl
    selection_key: str  # the summary.json key the lr is chosen on, e.g. final_val_acc
    arms: list[Arm] = field(default_factory=list)
    extend: int = 0  # how many lrs an arm's grid may grow by per side when its choice is at an edge

    def arm(self, optimizer: str, steps: float) -> Arm | None:
        return next((a for a in self.arms if a.optimizer == optimizer and a.steps == steps), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Study:
        data = json.loads(text)
        arms = []
        for a in data.pop("arms"):
            grid = [GridPoint(p["lr"], {int(k): v for k, v in p["values"].items()}, p["missing"]) for p in a["grid"]]
            selection = Selection(**a["selection"]) if a.get("selection") else None
            arms.append(Arm(a["optimizer"], a["steps"], a["preset_lr"], a["lrs"], grid, selection))
        return cls(**data, arms=arms)


def read_study(folder: Path) -> Study | None:
    """The study recorded in ``folder/tuning.json``, or None when there is none."""
    path = folder / STUDY_FILE
    if not path.exists():
        return None
    try:
        return Study.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: unreadable tuning record ({e}); move it away to start over") from e


def write_study(folder: Path, study: Study) -> None:
    """Record ``study`` in ``folder/tuning.json`` (atomically)."""
    text = study.to_json()
    atomic_write(folder / STUDY_FILE, lambda f: f.write(text.encode()))


def fill_grid(study: Study, folder: Path) -> None:
    """Read the tune runs of every arm from ``folder`` into its grid and choose its lr."""
    runs = _finished_runs(folder)
    for arm in study.arms:
        arm.grid = []
        for lr in arm.lrs:
            point = GridPoint(lr)
            for seed in study.tune_seeds:
                run = runs.get((arm.optimizer, float(arm.steps), _lr_key(lr), seed))
                if run is None:
                    point.missing.append(seed)
                elif run["status"] == "diverged":
                    point.values[seed] = None
                else:
                    value = run.get(study.selection_key)
                    point.values[seed] = float(value) if isinstance(value, (int, float)) else None
            arm.grid.append(point)
        arm.selection = select_lr(arm.grid, arm.preset_lr, higher_is_better=study.metric == "acc")


def _lr_key(lr: float) -> float:
    return float(f"{lr:.12g}")


def _finished_runs(folder: Path) -> dict[tuple, dict[str, Any]]:
    """Completed and diverged runs under ``folder`` by (optimizer, s, lr, seed): their summaries."""
    from xgrad.report.collect import Run, read_folder  # here: xgrad.report imports this module

    out: dict[tuple, dict[str, Any]] = {}
    if not folder.exists():
        return out
    for path in sorted(folder.rglob("summary.json")):
        run = read_folder(path.parent)
        if not isinstance(run, Run):
            continue
        lr = run_lr(run.config)
        if lr is None:
            continue
        s = run.summary
        out[(s["optimizer"], float(s["predict_steps"]), _lr_key(lr), s["seed"])] = s
    return out


def run_lr(config: dict[str, Any]) -> float | None:
    """The lr a run was configured with (its ``config.yaml``), or None when it is not a plain number."""
    optimizer = config.get("optimizer")
    lr = optimizer.get("lr") if isinstance(optimizer, dict) else None
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


# ----------------------------------------------------------------------------------- the command line


# Run keys the driver sets itself, and the driver key to use instead.
DRIVER_SET = {
    "optimizer": "optimizers=[...]",
    "optimizer.lr": "factors=[...] around the preset's lr",
    "predict": "steps=[0,1]",
    "predict_steps": "steps=[...]",
    "seed": "seeds=[...] and tune_seeds=[...]",
}


def parse_args(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``key=value`` arguments into the driver's options and the overrides passed to every run."""
    options = {k: (list(v) if isinstance(v, list) else v) for k, v in DRIVER_KEYS.items()}
    passed = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"invalid argument {arg!r}: expected key=value (driver keys: {', '.join(DRIVER_KEYS)})")
        if key not in DRIVER_KEYS:
            passed.append(arg)
            continue
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid {key}={value!r}: not a value ({e})") from e
    _check_options(options)
    for arg in passed:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key in DRIVER_SET:
            raise ConfigError(f"invalid argument {arg!r}: the driver sets {key} per run (use {DRIVER_SET[key]})")
    return options, passed


def _check_options(o: dict[str, Any]) -> None:
    def a_list(key: str, ok, what: str, kind=(int, float)) -> None:
        value = o[key]
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, kind) and not isinstance(v, bool) and ok(v) for v in value)
        ):
            raise ConfigError(f"invalid {key}={value!r}: accepted a non-empty list of {what}, e.g. {DRIVER_KEYS[key]}")
        if len(set(value)) != len(value):
            raise ConfigError(f"invalid {key}={value!r}: a value is listed twice")

    a_list("steps", lambda v: v >= 0 and math.isfinite(v), "horizons s >= 0 (0 = without prediction)")
    a_list("factors", lambda v: v > 0 and math.isfinite(v), "lr multiples > 0")
    a_list("tune_seeds", lambda v: v >= 0, "seeds >= 0", int)
    a_list("seeds", lambda v: v >= 0, "seeds >= 0", int)
    a_list("optimizers", lambda v: bool(v), "optimizer names", str)
    if not isinstance(o["extend"], int) or isinstance(o["extend"], bool) or o["extend"] < 0:
        raise ConfigError(f"invalid extend={o['extend']!r}: accepted an integer >= 0 (0: never widen the grid)")
    if o["phase"] not in PHASES:
        raise ConfigError(f"invalid phase={o['phase']!r}: accepted {', '.join(PHASES)}")
    if not isinstance(o["study"], str) or not o["study"] or "/" in o["study"]:
        raise ConfigError(f"invalid study={o['study']!r}: accepted a folder name (no '/')")


def _compose(overrides: list[str], optimizer: str):
    """The configuration an arm's runs get (Hydra's compose, as ``xgrad.run`` would)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    conf = Path(__file__).resolve().parent.parent / "conf"
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return compose("config", overrides=[*overrides, f"optimizer={optimizer}"])
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"the overrides {' '.join(overrides)} optimizer={optimizer} do not compose: {e}") from e


def _is_launch_key(override: str) -> bool:
    """Whether an override only changes how or where runs are launched, not what they compute."""
    from xgrad.identity import NON_IDENTITY_KEYS

    key = override.split("=", 1)[0].lstrip("+~")
    return key.startswith("hydra") or key.split(".")[0] in NON_IDENTITY_KEYS


def plan_study(options: dict[str, Any], passed: list[str]) -> Study:
    """The study the options describe: presets' lrs from the composed config, checks that need the config."""
    study_overrides: list[str] | None = None
    metric = key = ""
    arms = []
    for optimizer in options["optimizers"]:
        cfg = _compose([o for o in passed if not o.startswith("hydra")], optimizer)
        study_overrides = sorted(o for o in passed if not _is_launch_key(o))
        task, metric = cfg.dataset.task, "acc" if cfg.dataset.task == "classification" else "ppl"
        if task == "classification" and not cfg.val_size:
            raise ConfigError(
                "invalid val_size=0 for tuning: the lr is chosen on a validation split; add val_size=N (training "
                "images held out), e.g. val_size=1000"
            )
        key = f"final_val_{metric}"
        preset = cfg.optimizer.lr
        if not isinstance(preset, (int, float)) or isinstance(preset, bool) or not preset > 0:
            raise ConfigError(f"invalid optimizer.lr={preset!r} for {optimizer}: the grid needs a preset lr > 0")
        for s in options["steps"]:
            arms.append(Arm(optimizer, float(s), float(preset), grid_lrs(float(preset), options["factors"])))
    return Study(
        study_overrides or [], options["factors"], options["tune_seeds"], options["seeds"], metric, key, arms,
        options["extend"],
    )  # fmt: skip


def merge(previous: Study | None, study: Study) -> Study:
    """Add the new plan to what the folder already holds; refuse a folder of another protocol."""
    if previous is None:
        return study
    if previous.overrides != study.overrides or previous.selection_key != study.selection_key:
        raise ConfigError(
            f"this study folder holds runs of other overrides ({' '.join(previous.overrides) or 'none'}; now "
            f"{' '.join(study.overrides) or 'none'}): use another study=NAME or dir=PATH, or the same overrides"
        )
    if previous.tune_seeds != study.tune_seeds:
        raise ConfigError(
            f"this study chose its lrs on tune_seeds={previous.tune_seeds}; now {study.tune_seeds}: use another "
            "study=NAME, or the same tune_seeds"
        )
    study.factors = sorted({*previous.factors, *study.factors})  # an lr planned once is never counted as widened
    for arm in previous.arms:  # arms of earlier launches (e.g. the horizon added to a study) stay in the record
        now = study.arm(arm.optimizer, arm.steps)
        if now is None:
            study.arms.append(arm)
        else:  # and so do the lrs an arm's grid was widened by
            now.lrs = sorted({*now.lrs, *arm.lrs})
    return study


def multirun(folder: Path, overrides: list[str], passed: list[str], dry: bool = False) -> int:
    """Launch ``python -m xgrad.run -m`` for one grid into the study folder; return its exit code.

    ``dry``: only print the command (``phase=plan``).
    """
    command = [sys.executable, "-m", "xgrad.run", "-m", *passed, *overrides, f"hydra.sweep.dir={folder}"]
    print("+ " + " ".join(command[1:]), flush=True)
    return 0 if dry else subprocess.run(command, env=os.environ.copy()).returncode


def tune_phase(study: Study, folder: Path, passed: list[str], dry: bool = False) -> int:
    """Every arm's lr grid at the tune seeds: one multirun per (optimizer, horizon group), lrs and seeds swept."""
    failed = 0
    # Arms of one optimizer share a multirun while they share a grid; a grid widened for one arm gets its own.
    groups: dict[tuple[str, tuple[float, ...]], list[Arm]] = {}
    for arm in study.arms:
        groups.setdefault((arm.optimizer, tuple(arm.lrs)), []).append(arm)
    for (optimizer, grid), arms in groups.items():
        lrs = ",".join(f"{lr:g}" for lr in grid)
        seeds = ",".join(map(str, study.tune_seeds))
        common = [f"optimizer={optimizer}", f"optimizer.lr={lrs}", f"seed={seeds}"]
        for horizons in _horizon_overrides([a.steps for a in arms]):
            failed |= multirun(folder, [*common, *horizons], passed, dry) != 0
    return int(failed)


def _horizon_overrides(steps: list[float]) -> list[list[str]]:
    """The overrides that sweep the horizons ``steps``, one list per multirun: without prediction and s=1 (the
    default horizon) share one, the other s another."""
    plain = [s for s in steps if s in (0, 1)]
    other = [s for s in steps if s not in (0, 1)]
    return [
        *([["predict=" + ",".join(str(s > 0).lower() for s in plain)]] if plain else []),
        *([["predict=true", "predict_steps=" + ",".join(f"{s:g}" for s in other)]] if other else []),
    ]


def next_lr(lrs: list[float], upwards: bool) -> float:
    """The lr one step beyond the grid's edge, the step being the ratio of the two lrs at that edge (x3 on the
    default grid), three significant digits like the grid."""
    if len(lrs) < 2:
        ratio = 3.0
    else:
        ratio = lrs[-1] / lrs[-2] if upwards else lrs[1] / lrs[0]
    edge = lrs[-1] if upwards else lrs[0]
    return float(f"{(edge * ratio if upwards else edge / ratio):.3g}")


def widen(study: Study) -> list[tuple[Arm, float]]:
    """The (arm, lr) points to add where an arm's choice lies on its grid's edge, within ``study.extend`` per side.

    The lrs beyond the planned grid (``study.factors``) on a side count against that side's ``extend``.
    """
    points = []
    for arm in study.arms:
        sel = arm.selection
        if sel is None or sel.lr is None or not sel.at_edge:
            continue
        planned = grid_lrs(arm.preset_lr, study.factors)
        upwards = sel.lr == max(arm.lrs)
        added = [lr for lr in arm.lrs if (lr > max(planned) if upwards else lr < min(planned))]
        lr = next_lr(sorted(arm.lrs), upwards)
        if len(added) < study.extend and lr not in arm.lrs:  # a grid finer than its 3 digits cannot grow: stop there
            points.append((arm, lr))
    return points


def widen_phase(study: Study, folder: Path, passed: list[str]) -> int:
    """Grow the grids at their edges until every choice is inside its grid or ``study.extend`` is spent."""
    failed = 0
    while points := widen(study):
        for arm, lr in points:
            arm.lrs = sorted({*arm.lrs, lr})
        write_study(folder, study)
        print("\nchoice at the grid's edge, widening: " + ", ".join(
            f"{arm.optimizer} s={arm.steps:g} lr {lr:g}" for arm, lr in points), flush=True)  # fmt: skip
        for overrides in _grouped(points, study.tune_seeds):
            failed |= multirun(folder, overrides, passed) != 0
        fill_grid(study, folder)
        write_study(folder, study)
        if failed:
            break
    return int(failed)


def _grouped(points: list[tuple[Arm, float]], seeds: list[int]) -> list[list[str]]:
    """Multiruns covering exactly ``points``: per lr, optimizers that need the same horizons share one (so that
    both cores stay busy), the horizons split as :func:`_horizon_overrides` splits them."""
    by_lr: dict[float, dict[str, set[float]]] = {}
    for arm, lr in points:
        by_lr.setdefault(lr, {}).setdefault(arm.optimizer, set()).add(arm.steps)
    runs = []
    for lr, optimizers in by_lr.items():
        by_steps: dict[tuple[float, ...], list[str]] = {}
        for optimizer, steps in optimizers.items():
            by_steps.setdefault(tuple(sorted(steps)), []).append(optimizer)
        for steps, names in by_steps.items():
            common = [f"optimizer={','.join(names)}", f"optimizer.lr={lr:g}", f"seed={','.join(map(str, seeds))}"]
            runs += [[*common, *horizons] for horizons in _horizon_overrides(list(steps))]
    return runs


def final_phase(study: Study, folder: Path, passed: list[str]) -> int:
    """The final seeds of every arm whose lr is chosen."""
    failed = 0
    finished = _finished_runs(folder)
    for arm in study.arms:
        if arm.selection is None or arm.selection.lr is None:
            continue
        lr = _lr_key(arm.selection.lr)
        if all((arm.optimizer, float(arm.steps), lr, seed) in finished for seed in study.seeds):
            continue  # every final seed is done (e.g. the tune seed itself): no need to start Hydra for nothing
        seeds = ",".join(map(str, study.seeds))
        overrides = [*arm.overrides(), f"optimizer.lr={arm.selection.lr:g}", f"seed={seeds}"]
        failed |= multirun(folder, overrides, passed) != 0
    return int(failed)


def print_choices(study: Study) -> None:
    print(f"\nlr chosen on mean {study.selection_key} over tune seeds {study.tune_seeds}:")
    for arm in study.arms:
        sel = arm.selection
        what = "no prediction" if not arm.predict else f"prediction s={arm.steps:g}"
        chosen = "none" if sel is None or sel.lr is None else f"{sel.lr:g} (x{sel.lr / arm.preset_lr:.3g} preset)"
        note = " [at the grid's edge: consider widening factors]" if sel and sel.at_edge else ""
        print(f"  {arm.optimizer:<10} {what:<18} lr {chosen}{note}: {sel.reason if sel else 'not tuned yet'}")


def print_plan(study: Study, folder: Path, passed: list[str]) -> int:
    """``phase=plan``: the arms, their grids, the number of runs and the tune commands; nothing is run or written."""
    tune = sum(len(a.lrs) for a in study.arms) * len(study.tune_seeds)
    final = len(study.arms) * len(set(study.seeds) - set(study.tune_seeds))
    print(f"study {folder}: {len(study.arms)} arms, {tune} tuning runs, then {final} final runs at the chosen lrs")
    for arm in study.arms:
        what = "no prediction" if not arm.predict else f"prediction s={arm.steps:g}"
        print(f"  {arm.optimizer:<10} {what:<18} preset lr {arm.preset_lr:g}: grid {', '.join(map(str, arm.lrs))}")
    tune_phase(study, folder, passed, dry=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the protocol; return the exit code (0 done, 1 a run failed or an arm has no lr, 2 bad input)."""
    try:
        options, passed = parse_args(sys.argv[1:] if argv is None else argv)
        folder = Path(options["dir"] or Path("outputs") / "tune" / options["study"])
        study = merge(read_study(folder), plan_study(options, passed))
        if options["phase"] == "plan":
            return print_plan(study, folder, passed)
        folder.mkdir(parents=True, exist_ok=True)
        write_study(folder, study)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = tune_phase(study, folder, passed) if options["phase"] in ("tune", "all") else 0
    fill_grid(study, folder)
    write_study(folder, study)
    if options["phase"] in ("tune", "all") and not failed:
        failed |= widen_phase(study, folder, passed)
    print_choices(study)
    if options["phase"] in ("final", "all"):
        failed |= final_phase(study, folder, passed)
    undecided = [a for a in study.arms if a.selection is None or a.selection.lr is None]
    report = folder.parent / f"{folder.name}_report"
    print(f"\nstudy {folder}: report with  python -m xgrad.report {folder} --out {report}")
    return 1 if failed or undecided else 0


if __name__ == "__main__":
    sys.exit(main())
