"""The first command to run on a machine with a GPU: does training work there, and what does prediction cost?

    python scripts/gpu_check.py                # CUDA, one GPU, under 5 minutes; writes results/gpu_check.md
    python scripts/gpu_check.py --device cpu   # the checks a CPU can emulate, 1-2 minutes (the test suite runs it)
    make gpu-check

The training checks go through the real runner (``xgrad.trainer.train``, what ``python -m xgrad.run`` runs) on
tiny configurations of generated data (demo_images with ResNet-20, demo_text with a 1-layer LSTM), one epoch:

- **run**: both tasks, prediction off and on, ``precision=fp32|bf16|fp16``: the run completes with finite losses,
  summary.json states the precision asked for, and the layers compute in the dtypes it states (convolutions and
  linear layers in ``precision``, the LSTM in ``rnn_precision``). On CPU the fp16 image runs use LeNet: CPU float16
  convolutions are about 20x slower than float32 ones.
- **agreement**: bf16 and fp32 mean training losses over the same first steps (same seed and data) differ by at
  most ``AGREEMENT_TOLERANCE`` (relative).
- **host syncs**: synchronisations between consecutive optimizer steps, counted on CUDA under
  ``torch.cuda.set_sync_debug_mode("warn")`` and on CPU as the loop's reads of tensors on the host (``item``,
  ``float``, ``bool``, ``int``, ``tolist``, ``cpu``, ``numpy``, tensors created with a ``device``) with the loop's
  CUDA settings. At most ``SYNCS_PER_SAMPLE`` per sampled step (one step in ``sync_every``), plus GradScaler's one
  per step at fp16 on CUDA; the end of the epoch is not counted.
- **cudnn chunk**: no "not part of single contiguous chunk of memory" warning in any run (cuDNN re-packing the LSTM
  weights), and the predicted LSTM weights share one storage at their original offsets (on CPU the weights are first
  packed into one buffer, as cuDNN's ``flatten_parameters`` does).
- **channels_last**: ``channels_last=true`` with prediction: convolution weights are channels_last while training.
- **compile**: ``compile=true`` with prediction, both tasks (on CPU the images use LeNet: compiling a ResNet for CPU
  takes minutes).
- **ddp**: ``torchrun --nproc_per_node=2`` with NCCL, with prediction (2 GPUs or more).
- **cost**: predict+restore against the same optimizer's ``step()``, timed with CUDA events by
  scripts/bench_predict.py's ``bench_one``, for ResNet-18, ResNet-34 (batch 128) and the 2x650 LSTM (20x35 tokens).
  On CPU the same code runs on ResNet-20 and the 2x200 LSTM with 3 repeats: the code path only (``make bench``
  measures CPU costs).

Exit status: 0 when every check passes, 1 when one fails (the report says which), 2 without a GPU (and without
``--device cpu``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # bench_predict, the one implementation of the cost measurement

from xgrad.errors import error_text  # noqa: E402
from xgrad.trainer import Trainer, train  # noqa: E402

#: The keys these checks set, which the runner must have (conf/config.yaml).
RUNTIME_KEYS = ("precision", "channels_last", "deterministic")
PRECISIONS = ("fp32", "bf16", "fp16")
#: Largest relative difference of the mean training loss over the first steps between bf16 and fp32 runs.
AGREEMENT_TOLERANCE = 0.05
#: Host syncs allowed at each sampled step (the divergence check, and the progress bar's loss when one is shown).
SYNCS_PER_SAMPLE = 2
RNN_REPACK_WARNING = "not part of single contiguous chunk of memory"
SYNC_WARNING = "called a synchronizing CUDA operation"

# Prediction error measurement off: its own sampled syncs are not the loop's.
COMMON = ["epochs=1", "progress=line", "scheduler=constant", "resume=false", "eval_batch_size=64",
          "prediction_error_every=0"]  # fmt: skip
#: 16 training steps of 16 images.
IMAGE = ["dataset=demo_images", "dataset.n_train=256", "dataset.n_test=64", "model=resnet20", "batch_size=16",
         "optimizer=sgdm", "optimizer.lr=0.05"]  # fmt: skip
#: 30 truncated-BPTT windows of 10 x 20 tokens.
TEXT = ["dataset=demo_text", "dataset.n_train=6000", "dataset.n_valid=600", "dataset.n_test=300",
        "dataset.vocab_size=200", "dataset.bptt=20", "dataset.eval_batch_size=10", "model=lstm",
        "model.embedding_size=32", "model.hidden_size=32", "model.num_layers=1", "batch_size=10", "grad_clip=0.25",
        "optimizer=adam", "optimizer.lr=1e-2", "optimizer.weight_decay=0"]  # fmt: skip
TASKS = {"image": IMAGE, "text": TEXT}


@dataclass
class Check:
    """One line of the report: ``ok`` is True (pass), False (fail) or None (skipped)."""

    name: str
    setting: str
    ok: bool | None
    detail: str


@dataclass
class Run:
    """What one training run through the runner did."""

    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    step_syncs: list[int] = field(default_factory=list)  # syncs between consecutive optimizer steps
    sync_every: int | None = None
    dtypes: dict[str, set[str]] = field(default_factory=dict)  # layer kind -> output dtypes seen in training
    channels_last: set[bool] = field(default_factory=set)  # whether conv weights were channels_last in training
    seconds: float = 0.0


# ----------------------------------------------------------------------------------- the runner, instrumented


def compose(overrides: list[str]):
    """``conf/config.yaml`` with ``overrides``, as ``python -m xgrad.run`` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


class SyncCounter:
    """Counts host synchronisations: CUDA's sync debug warnings, or on CPU the loop's host reads of tensors."""

    LOOP_MODULES = ("xgrad.trainer", "xgrad.tasks", "xgrad.distributed")
    READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")

    def __init__(self, device: torch.device, caught: list[warnings.WarningMessage]) -> None:
        self.device, self.caught, self.host_reads = device, caught, 0

    @property
    def count(self) -> int:
        if self.device.type == "cuda":
            return sum(SYNC_WARNING in str(w.message) for w in self.caught)
        return self.host_reads

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode(0)
            return
        originals = {name: getattr(torch.Tensor, name) for name in self.READS}
        original_tensor = torch.tensor
        for name, fn in originals.items():
            setattr(torch.Tensor, name, self._counted(fn))

        def tensor(*args, **kwargs):
            if kwargs.get("device") is not None and self._called_by_loop():
                self.host_reads += 1  # on CUDA a blocking copy from the host
            return original_tensor(*args, **kwargs)

        torch.tensor = tensor
        try:
            yield
        finally:
            for name, fn in originals.items():
                setattr(torch.Tensor, name, fn)
            torch.tensor = original_tensor

    def _counted(self, fn: Callable) -> Callable:
        def read(tensor, *args, **kwargs):
            if self._called_by_loop():
                self.host_reads += 1
            return fn(tensor, *args, **kwargs)

        return read

    def _called_by_loop(self) -> bool:
        # Only the loop's own reads: torch's optimizers read their step counts, which live on the host on CUDA too.
        frame = sys._getframe(2)
        while frame is not None and frame.f_globals.get("__name__") == "torch._tensor":  # e.g. Tensor.__format__
            frame = frame.f_back
        return frame is not None and str(frame.f_globals.get("__name__", "")).startswith(self.LOOP_MODULES)


@contextlib.contextmanager
def instrumented(record: Run, device: torch.device, watch_layers: bool) -> Iterator[None]:
    """Record ``record``'s warnings, its host syncs per optimizer step (in training epochs, with the loop's CUDA
    settings on CPU too) and, with ``watch_layers``, the dtypes and memory format layers compute in."""
    from xgrad.tasks import Runtime

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counter = SyncCounter(device, caught)
        train_epoch, from_config = Trainer.train_epoch, Runtime.__dict__.get("from_config")

        def counted_epoch(self: Trainer, epoch: int):
            record.sync_every = getattr(self.runtime, "sync_every", None)
            marks: list[int] = []
            hook = register_optimizer_step_pre_hook(lambda *_: marks.append(counter.count))
            try:
                with counter.active():
                    return train_epoch(self, epoch)
            finally:
                hook.remove()
                record.step_syncs += [b - a for a, b in itertools.pairwise(marks)]

        def as_on_cuda(cls, cfg, dev, *args, **kwargs):  # the loop's CUDA settings, emulated on CPU
            from xgrad.tasks import CUDA_SYNC_EVERY

            runtime = from_config.__func__(cls, cfg, dev, *args, **kwargs)
            return dataclasses.replace(runtime, sync_every=CUDA_SYNC_EVERY)

        hooks = [nn.modules.module.register_module_forward_hook(layer_recorder(record))] if watch_layers else []
        Trainer.train_epoch = counted_epoch
        if device.type == "cpu" and from_config is not None:
            Runtime.from_config = classmethod(as_on_cuda)
        try:
            yield
        finally:
            Trainer.train_epoch = train_epoch
            if from_config is not None:
                Runtime.from_config = from_config
            for hook in hooks:
                hook.remove()
            record.warnings = [str(w.message) for w in caught if SYNC_WARNING not in str(w.message)]


def layer_recorder(record: Run) -> Callable:
    """A global forward hook recording what convolutions, linear and recurrent layers compute in, in training."""

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if not module.training:
            return
        if isinstance(module, nn.Conv2d):
            record.dtypes.setdefault("conv", set()).add(str(output.dtype).removeprefix("torch."))
            record.channels_last.add(module.weight.is_contiguous(memory_format=torch.channels_last))
        elif isinstance(module, nn.Linear):
            record.dtypes.setdefault("linear", set()).add(str(output.dtype).removeprefix("torch."))
        elif isinstance(module, nn.RNNBase):
            record.dtypes.setdefault("rnn", set()).add(str(output[0].dtype).removeprefix("torch."))

    return hook


def run(overrides: list[str], device: torch.device, workdir: Path, watch_layers: bool = True) -> Run:
    """Train ``overrides`` through the runner in a fresh folder under ``workdir``, instrumented."""
    record = Run()
    folder = Path(tempfile.mkdtemp(dir=workdir))
    start = time.perf_counter()
    try:
        cfg = compose([*COMMON, *overrides, f"device={device.type}"])
        with instrumented(record, device, watch_layers):
            record.summary = train(cfg, folder).summary
    except Exception as e:
        record.error = error_text(e)
    record.seconds = time.perf_counter() - start
    return record


# ----------------------------------------------------------------------------------- the checks


DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def check_run(name: str, setting: str, record: Run, precision: str | None) -> Check:
    """A run completed with finite losses, and computed in the precision its summary states."""
    s = record.summary
    if record.error or s.get("status") != "completed":
        return Check(name, setting, False, record.error or f"status {s.get('status')}")
    losses = {k: v for k, v in s.items() if k.startswith("final_") and k.endswith("_loss")}
    if not losses or not all(math.isfinite(v) for v in losses.values()):
        return Check(name, setting, False, f"non-finite or missing losses: {losses}")
    problems = []
    if precision is not None and s.get("precision") != precision:
        problems.append(f"summary precision {s.get('precision')!r}, asked {precision!r}")
    for kind in ("conv", "linear"):
        seen = record.dtypes.get(kind)
        if seen is not None and seen != {DTYPE_NAMES.get(s.get("precision"), "?")}:
            problems.append(f"{kind} layers computed in {sorted(seen)}, summary precision says {s.get('precision')}")
    rnn = record.dtypes.get("rnn")
    if rnn is not None and rnn != {DTYPE_NAMES.get(s.get("rnn_precision"), "?")}:
        problems.append(f"LSTM computed in {sorted(rnn)}, summary rnn_precision says {s.get('rnn_precision')}")
    detail = f"train loss {s['final_train_loss']:.4f}, {record.seconds:.1f}s"
    return Check(name, setting, not problems, "; ".join(problems) or detail)


def check_syncs(setting: str, record: Run, precision: str, device: torch.device) -> Check:
    """Host syncs between optimizer steps: only at sampled steps (plus GradScaler's at fp16 on CUDA)."""
    if record.error or not record.step_syncs:
        return Check("host syncs", setting, False, "the run failed" if record.error else "no training steps recorded")
    if record.sync_every is None:
        return Check("host syncs", setting, False, "the runtime has no sync_every (issue #10's runtime work missing)")
    steps = len(record.step_syncs)
    per_step = 1 if precision == "fp16" and device.type == "cuda" else 0
    allowed = math.ceil(steps / record.sync_every) * SYNCS_PER_SAMPLE + steps * per_step
    total = sum(record.step_syncs)
    detail = f"{total} in {steps} steps ({total / steps:.2f} per step); allowed {allowed}: {SYNCS_PER_SAMPLE} per "
    detail += f"{record.sync_every} steps" + (" + 1 per step (GradScaler)" if per_step else "")
    return Check("host syncs", setting, total <= allowed, detail)


def check_agreement(task: str, predict: bool, runs: dict) -> Check:
    """bf16 and fp32 agree on the mean training loss over the first steps."""
    setting = f"{task}, predict={str(predict).lower()}"
    a, b = runs.get((task, "fp32", predict)), runs.get((task, "bf16", predict))
    if not a or not b or "final_train_loss" not in a.summary or "final_train_loss" not in b.summary:
        return Check("fp32 vs bf16", setting, False, "a run failed (see above)")
    fp32, bf16 = a.summary["final_train_loss"], b.summary["final_train_loss"]
    diff = abs(bf16 - fp32) / abs(fp32)
    ok = diff <= AGREEMENT_TOLERANCE
    steps = len(a.step_syncs) + 1
    detail = f"mean loss over {steps} steps: fp32 {fp32:.4f}, bf16 {bf16:.4f}, differ by {100 * diff:.2f}%"
    return Check("fp32 vs bf16", setting, ok, f"{detail} ({'<=' if ok else '>'} {100 * AGREEMENT_TOLERANCE:g}%)")


def check_cudnn_chunk(device: torch.device, workdir: Path, runs: list[Run]) -> list[Check]:
    """Predicted LSTM weights stay one chunk at their offsets, and no run re-packed them (cuDNN's warning)."""
    setting = "predicted LSTM weights"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cfg = compose([*COMMON, *TEXT, "predict=true", f"device={device.type}"])
            trainer = Trainer(cfg, Path(tempfile.mkdtemp(dir=workdir)))
            (rnn,) = [m for m in trainer.model.modules() if isinstance(m, nn.RNNBase)]
            if device.type == "cpu":
                pack_like_cudnn(rnn._flat_weights)
            layout = storage_layout(rnn._flat_weights)
            trainer.train_epoch(0)  # the real loop, with prediction
            with trainer.predictor:
                predicted = storage_layout(rnn._flat_weights)
            restored = storage_layout(rnn._flat_weights)
            storages = {s for s, _, _ in predicted}
            ok = (len({s for s, _, _ in layout}) == 1 and len(storages) == 1 and storages != {layout[0][0]}
                  and [p[1:] for p in predicted] == [p[1:] for p in layout] and restored == layout)  # fmt: skip
            detail = f"{len(layout)} LSTM weights in one storage, predicted into one spare at their offsets and strides"
            chunk = Check("cudnn chunk", setting, ok, detail if ok else
                          f"layout {layout} -> predicted {predicted} -> restored {restored}")  # fmt: skip
        except Exception as e:
            chunk = Check("cudnn chunk", setting, False, error_text(e))
    repacked = [w for r in runs for w in r.warnings if RNN_REPACK_WARNING in w]
    repacked += [str(w.message) for w in caught if RNN_REPACK_WARNING in str(w.message)]
    detail = repacked[0][:120] if repacked else f"{len(runs) + 1} runs"
    return [chunk, Check("cudnn chunk", "no re-pack warning in any run", not repacked, detail)]


def storage_layout(tensors: list[torch.Tensor]) -> list[tuple[int, int, tuple[int, ...]]]:
    """Each tensor's storage address, offset into it and strides."""
    return [(t.untyped_storage().data_ptr(), t.storage_offset(), t.stride()) for t in tensors]


def pack_like_cudnn(weights: list[torch.Tensor]) -> None:
    """Make ``weights`` consecutive views of one flat buffer, as ``flatten_parameters`` does on CUDA."""
    flat = torch.empty(sum(w.numel() for w in weights), dtype=weights[0].dtype, device=weights[0].device)
    offset = 0
    for w in weights:
        view = flat[offset : offset + w.numel()].view_as(w)
        view.copy_(w.detach())
        w.data = view
        offset += w.numel()


def check_ddp(device: torch.device, workdir: Path) -> Check:
    """Two processes with NCCL through torchrun, with prediction."""
    setting = "torchrun --nproc_per_node=2, NCCL, image, predict=true"
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        return Check("ddp", setting, None, "needs 2 GPUs")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        return Check("ddp", setting, False, "torchrun not found")
    folder = Path(tempfile.mkdtemp(dir=workdir))
    command = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "xgrad.run", *COMMON, *IMAGE, "predict=true",
               "device=cuda", f"hydra.run.dir={folder}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=240)
    from xgrad.rundir import read_summary_if_valid

    summary = read_summary_if_valid(folder) or {}
    ok = proc.returncode == 0 and summary.get("status") == "completed"
    if not ok:
        return Check("ddp", setting, False, (proc.stderr.strip().splitlines() or ["no output"])[-1])
    loss, seconds = summary.get("final_train_loss", float("nan")), time.perf_counter() - start
    return Check("ddp", setting, True, f"completed, train loss {loss:.4f}, {seconds:.0f}s")


def cost_rows(device: torch.device) -> tuple[list[Check], str]:
    """predict+restore against optimizer.step() (bench_predict's bench_one; CUDA events on CUDA)."""
    import bench_predict

    cuda = device.type == "cuda"
    workloads = list(bench_predict.WORKLOADS.values())  # on CPU the code path only: ResNet-20, 2x200 LSTM
    if cuda:
        image, lstm = bench_predict.image_workload, bench_predict.lstm_workload
        workloads = [("resnet18 (batch 128)", image("resnet18")), ("resnet34 (batch 128)", image("resnet34")),
                     ("lstm 2x650 (20x35)", lstm(650))]  # fmt: skip
    optimizers = ("sgdm", "adamw") if cuda else ("adamw",)
    repeats, step_repeats = (50, 10) if cuda else (3, 2)
    rows, checks = [], []
    for label, workload in workloads:
        for opt in optimizers:
            try:
                result = bench_predict.bench_one(workload, opt, method="rule", device=device, repeats=repeats,
                                                 step_repeats=step_repeats, with_compiled=cuda)  # fmt: skip
            except Exception as e:
                checks.append(Check("cost", f"{label}, {opt}", False, error_text(e)))
                continue
            rows.append((device.type, label, opt, "rule", result))
            ratio = result["predict_restore_ms"] / result["step_ms"]
            ok = all(math.isfinite(v) and v > 0 for k, v in result.items() if k.endswith("_ms") and k != "compiled_ms")
            checks.append(Check("cost", f"{label}, {opt}", ok, f"predict+restore {result['predict_restore_ms']:.3f} ms"
                                f" = {ratio:.2f}x step() {result['step_ms']:.3f} ms"))  # fmt: skip
    return checks, bench_predict.markdown_table(rows) if rows else ""


# ----------------------------------------------------------------------------------- all of it


def missing_runtime_keys() -> list[str]:
    cfg = compose([])
    return [key for key in RUNTIME_KEYS if key not in cfg]


def all_checks(device: torch.device, workdir: Path, report: Callable[[Check], None]) -> str:
    """Run every check on ``device``, reporting each as it ends; return the cost table."""
    missing = missing_runtime_keys()
    if missing:
        report(Check("config", "runtime keys", False, f"conf/config.yaml lacks {missing} (issue #10's runtime work)"))
        return ""
    runs: dict[tuple[str, str, bool], Run] = {}
    for task, overrides in TASKS.items():
        for precision in PRECISIONS:
            slow = device.type == "cpu" and task == "image" and precision == "fp16"  # CPU fp16 convolutions: ~20x
            model = ["model=lenet"] if slow else []
            for predict in (False, True):
                setting = f"{task}{' (lenet)' if slow else ''}, precision={precision}, predict={str(predict).lower()}"
                record = run([*overrides, *model, f"precision={precision}", f"predict={str(predict).lower()}"],
                             device, workdir)  # fmt: skip
                runs[task, precision, predict] = record
                report(check_run("run", setting, record, precision))
                report(check_syncs(setting, record, precision, device))
        for predict in (False, True):
            report(check_agreement(task, predict, runs))
    record = run([*IMAGE, "channels_last=true", "predict=true"], device, workdir)
    runs["image", "channels_last", True] = record
    ok = record.channels_last == {True}
    report(check_run("channels_last", "image, channels_last=true, predict=true", record, None) if ok else
           Check("channels_last", "image, channels_last=true, predict=true", False,
                 f"conv weights channels_last while training: {sorted(record.channels_last)}"))  # fmt: skip
    compile_image = IMAGE if device.type == "cuda" else [*IMAGE, "model=lenet"]
    for task, overrides in (("image", compile_image), ("text", TEXT)):
        record = run([*overrides, "compile=true", "predict=true"], device, workdir, watch_layers=False)
        runs[task, "compile", True] = record
        model = "lenet" if "model=lenet" in overrides else ("resnet20" if task == "image" else "lstm")
        report(check_run("compile", f"{task} ({model}), compile=true, predict=true", record, None))
    for check in check_cudnn_chunk(device, workdir, list(runs.values())):
        report(check)
    report(check_ddp(device, workdir))
    checks, table = cost_rows(device)
    for check in checks:
        report(check)
    return table


def machine(device: torch.device) -> str:
    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads"
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        return f"{gpu} ({torch.cuda.device_count()} GPUs), CUDA {torch.version.cuda}, {cpu}; torch {torch.__version__}"
    return f"{cpu}; torch {torch.__version__}"


def write_report(out: Path, device: torch.device, checks: list[Check], table: str, seconds: float) -> None:
    status = {True: "pass", False: "**FAIL**", None: "skipped"}
    status_labels = ((True, "passed"), (False, "failed"), (None, "skipped"))
    counts = {label: sum(c.ok is key for c in checks) for key, label in status_labels}
    lines = [
        "# GPU self-check" if device.type == "cuda" else "# GPU self-check, CPU emulation (`--device cpu`)",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Machine: {machine(device)}  ",
        f"Result: {', '.join(f'{n} {label}' for label, n in counts.items())} in {seconds:.0f} s",
        "",
        "| check | setting | result | detail |",
        "|---|---|---|---|",
        *(f"| {c.name} | {c.setting} | {status[c.ok]} | {c.detail} |" for c in checks),
        "",
        f"Tolerances: fp32 vs bf16 mean training loss over the first steps within {100 * AGREEMENT_TOLERANCE:g}% "
        f"(relative); host syncs at most {SYNCS_PER_SAMPLE} per sampled step (one in `sync_every`) plus "
        "GradScaler's one per step at fp16 on CUDA. See `scripts/gpu_check.py` for what each check does.",
        "",
    ]
    if table:
        timer = "CUDA events" if device.type == "cuda" else "CPU clock, 3 repeats: the code path only"
        lines += [f"## Cost of prediction ({timer})", "", table]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, help="the report (default results/gpu_check.md, on CPU "
                        "results/gpu_check_cpu.md)")  # fmt: skip
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU found: run this on a machine with one, or `--device cpu` for the checks a CPU can emulate",
              file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device(args.device)
    out = args.out or ROOT / "results" / ("gpu_check.md" if device.type == "cuda" else "gpu_check_cpu.md")
    os.environ.setdefault("WANDB_MODE", "disabled")
    checks: list[Check] = []

    def report(check: Check) -> None:
        checks.append(check)
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[check.ok]
        print(f"{mark} {check.name:<14} {check.setting:<46} {check.detail}", flush=True)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xgrad-gpu-check-") as workdir:
        table = all_checks(device, Path(workdir), report)
    seconds = time.perf_counter() - start
    write_report(out, device, checks, table, seconds)
    failed = [c for c in checks if c.ok is False]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} checks passed or skipped, {len(failed)} failed, "
          f"{seconds:.0f} s; report: {out}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
