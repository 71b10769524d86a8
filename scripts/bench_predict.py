"""Benchmark weight prediction: cost of predict + restore against the optimizer step and a whole training step.

For a CIFAR ResNet-20 (batch 128) and a 2-layer 200-unit PTB-sized LSTM (batch 20 x 35 tokens), per optimizer
and prediction method (the registered rule, and extrapolation of the last update, the only method for Muon and
Lion), on CPU and on CUDA when present, prints the median time of ``optimizer.step()`` (foreach), of predict +
restore (for extrapolation including the step pre-hook's copy of theta_{t-1}), of a whole training step without
and with prediction, their ratios, the extra memory, and, for the rules, our speedup over a naive reference (a
Python loop over parameters with a clone-based cache, as the paper's released code does).

    python scripts/bench_predict.py [--device cpu cuda] [--repeats 50] [--methods rule extrapolate]
                                    [--out results/bench_predict.md]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from xgrad import WeightPredictor
from xgrad.models import create_model
from xgrad.optim import AdaM3, MissingExtraError, create_optimizer

OPTIMIZERS = {
    "sgdm": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "adam": {"lr": 1e-3, "weight_decay": 5e-4},
    "adamw": {"lr": 1e-3, "weight_decay": 1e-2},
    "adabelief": {"lr": 1e-3, "eps": 1e-8, "weight_decay": 5e-4},
    "adam3": {"lr": 1e-3, "eps": 1e-8, "weight_decay": 5e-4},
    "muon": {},  # the suite's defaults: Muon on the hidden weight matrices, AdamW on the rest
    "lion": {},  # pytorch-optimizer's Lion (the extra-optim extra); skipped when it is not installed
}
#: Optimizers with a registered rule (the others are predicted by extrapolation only).
WITH_RULE = ("sgdm", "adam", "adamw", "adabelief", "adam3")


# ----------------------------------------------------------------------------------- workloads


def image_workload(name: str) -> Callable:
    """A CIFAR image model (``resnet20``, ``resnet18``, ...) on a batch of 128 images (bf16 autocast on CUDA)."""

    def build(device: torch.device):
        model = create_model(name, num_classes=10).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        x = torch.randn(128, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (128,), device=device)

        def loss_fn() -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                return nn.functional.cross_entropy(model(x), y)

        return model, loss_fn

    return build


def lstm_workload(size: int) -> Callable:
    """2-layer LSTM language model of ``size`` units, vocabulary 10,000, batch 20 x bptt 35."""

    def build(device: torch.device):
        model = create_model("lstm", num_classes=10000, embedding_size=size, hidden_size=size, num_layers=2)
        model = model.to(device)
        tokens = torch.randint(0, 10000, (36, 20), device=device)

        def loss_fn() -> torch.Tensor:
            logits, _ = model(tokens[:-1])
            return nn.functional.cross_entropy(logits.flatten(0, 1), tokens[1:].flatten())

        return model, loss_fn

    return build


#: name on the command line -> (label in the table, workload). scripts/gpu_check.py times larger ones on CUDA
#: (``image_workload("resnet34")``, ``lstm_workload(650)``).
WORKLOADS = {
    "resnet20": ("resnet20 (batch 128)", image_workload("resnet20")),
    "lstm": ("lstm 2x200 (20x35)", lstm_workload(200)),
}


# ----------------------------------------------------------------------------------- the naive reference


class NaivePredictor:
    """The conventional way: per-parameter Python loop, clone the weights, compute in place, copy back."""

    def __init__(self, optimizer: torch.optim.Optimizer, steps: float = 1.0) -> None:
        self.optimizer, self.steps, self.cache = optimizer, steps, []

    @torch.no_grad()
    def predict(self) -> None:
        for group in self.optimizer.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                state = self.optimizer.state.get(p)
                if not state:
                    continue
                self.cache.append((p, p.data.clone()))
                if "momentum_buffer" in state:
                    p.data.add_(state["momentum_buffer"], alpha=-self.steps * lr)
                    continue
                beta1, beta2 = group["betas"]
                t = float(state["step"])
                bias_correction1, bias_correction2 = 1 - beta1**t, 1 - beta2**t
                denom = state["exp_avg_sq"].sqrt() / math.sqrt(bias_correction2)
                if not isinstance(self.optimizer, AdaM3):
                    denom.add_(group["eps"])
                p.data.addcdiv_(state["exp_avg"], denom, value=-self.steps * lr / bias_correction1)

    @torch.no_grad()
    def restore(self) -> None:
        for p, theta in self.cache:
            p.data.copy_(theta)
        self.cache.clear()


# ----------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_seconds(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds ``fn`` takes, from an idle device: CUDA events on CUDA (the GPU's clock), the host clock on CPU."""
    sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start_s = time.perf_counter()
    fn()
    return time.perf_counter() - start_s


def interleaved_seconds(
    fns: list[Callable[[], None]], device: torch.device, repeats: int, warmup: int = 3
) -> list[list[float]]:
    """Wall times of each function over ``repeats`` rounds; one call of each per round, the order reversed every
    other round, so drift and cache state before a call affect all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(repeats):
        order = range(len(fns)) if round_ % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            times[i].append(timed_seconds(fns[i], device))
    return times


def bench_one(
    workload,
    optimizer_name: str,
    method: str,
    device: torch.device,
    repeats: int,
    step_repeats: int,
    with_compiled: bool,
) -> dict:
    torch.manual_seed(0)
    model, loss_fn = workload(device)
    hp = OPTIMIZERS[optimizer_name]
    optimizer = create_optimizer(optimizer_name, model, foreach=True, **hp)
    # The baseline steps with a twin optimizer: extrapolation's step pre-hook (its copy of theta_{t-1}) belongs to
    # the cost of prediction, so the step without prediction must run without it.
    baseline = create_optimizer(optimizer_name, model, foreach=True, **hp)
    predictor = WeightPredictor(optimizer, steps=1, method=method)
    rule = method == "rule"
    compiled = WeightPredictor(optimizer, steps=1, compile=True) if with_compiled and rule else None
    naive = NaivePredictor(optimizer, steps=1) if rule else None

    def train_step(with_prediction: bool) -> None:
        step_with = optimizer if with_prediction else baseline
        step_with.zero_grad(set_to_none=True)
        if with_prediction:
            predictor.predict()
        loss_fn().backward()
        if with_prediction:
            predictor.restore()
        step_with.step()

    for with_prediction in (False, True, True):  # optimizer states exist, and extrapolation has theta_{t-1}
        train_step(with_prediction)
    loss_fn().backward()  # gradients stay in place for the timed optimizer.step() calls

    def predict_restore() -> None:
        if not rule:
            predictor._save_previous()  # what the step pre-hook does in optimizer.step(), timed here instead
        predictor.predict()
        predictor.restore()

    def naive_predict_restore() -> None:
        naive.predict()
        naive.restore()

    def compiled_predict_restore() -> None:
        compiled.predict()
        compiled.restore()

    # Stepping repeatedly with the same gradients is fine for timing: the work per step does not change.
    fns = [baseline.step, predict_restore]
    if naive is not None:
        fns.append(naive_predict_restore)
    if compiled is not None and optimizer_name != "sgdm":  # SGD has no fused path
        compiled_predict_restore()  # compiles (seconds) before timing
        fns.append(compiled_predict_restore)
    medians = list(map(statistics.median, interleaved_seconds(fns, device, repeats)))
    step_s, ours_s = medians[:2]
    naive_s = medians[2] if naive is not None else float("nan")
    compiled_s = medians[3:] if naive is not None else []
    # The overhead is the median of per-round ratios: a whole step is ~100x the prediction, so the ratio of two
    # separate medians would mostly measure drift between rounds.
    plain, pred = interleaved_seconds([lambda: train_step(False), lambda: train_step(True)], device, step_repeats)
    overhead = statistics.median(b / a - 1 for a, b in zip(plain, pred))
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "step_ms": step_s * 1e3,
        "predict_restore_ms": ours_s * 1e3,
        "naive_ms": naive_s * 1e3,
        "compiled_ms": compiled_s[0] * 1e3 if compiled_s else float("nan"),
        "train_ms": statistics.median(plain) * 1e3,
        "train_pred_ms": statistics.median(pred) * 1e3,
        "overhead": overhead,
        "extra_mib": predictor.buffer_bytes / 2**20,
        "param_mib": param_bytes / 2**20,
    }


def markdown_table(rows: list[tuple[str, str, str, str, dict]]) -> str:
    head = (
        "| device | model | optimizer | method | step() ms | predict+restore ms | ratio to step | naive ms "
        "| speedup vs naive | compile=True ms (ratio to step) | train step ms | with prediction ms | overhead "
        "| predict+restore / train step | extra MiB (params MiB) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for device, model, opt, method, r in rows:
        c, n = r["compiled_ms"], r["naive_ms"]
        compiled = "n/a" if math.isnan(c) else f"{c:.3f} ({c / r['step_ms']:.2f}x)"
        naive = "n/a | n/a" if math.isnan(n) else f"{n:.3f} | {n / r['predict_restore_ms']:.1f}x"
        lines.append(
            f"| {device} | {model} | {opt} | {method} | {r['step_ms']:.3f} | {r['predict_restore_ms']:.3f} "
            f"| {r['predict_restore_ms'] / r['step_ms']:.2f}x | {naive} "
            f"| {compiled} "
            f"| {r['train_ms']:.1f} | {r['train_pred_ms']:.1f} "
            f"| {100 * r['overhead']:+.1f}% | {100 * r['predict_restore_ms'] / r['train_ms']:.2f}% "
            f"| {r['extra_mib']:.2f} ({r['param_mib']:.2f}) |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", nargs="+", default=["cpu", "cuda"], help="devices to try (cuda skipped if absent)")
    parser.add_argument("--models", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--methods", nargs="+", default=["rule", "extrapolate"], choices=["rule", "extrapolate"],
                        help="prediction methods to time (rule only where the optimizer has one)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=200, help="timed repeats of step and predict+restore")
    parser.add_argument("--step-repeats", type=int, default=30, help="timed repeats of whole training steps")
    parser.add_argument("--no-compiled", action="store_true", help="skip the compile=True predictor")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="also write the table and its context to this Markdown file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = [torch.device(d) for d in args.device if d != "cuda" or torch.cuda.is_available()]
    rows = []
    for device in devices:
        for name in args.models:
            model_name, workload = WORKLOADS[name]
            for opt in args.optimizers:
                for method in args.methods:
                    if method == "rule" and opt not in WITH_RULE:
                        continue
                    try:
                        result = bench_one(workload, opt, method, device, args.repeats, args.step_repeats,
                                           not args.no_compiled)  # fmt: skip
                    except MissingExtraError as e:  # Lion without pytorch-optimizer
                        print(f"skipped {opt}: {e}", file=sys.stderr)
                        break
                    rows.append((device.type, model_name, opt, method, result))
                    print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
    table = markdown_table(rows)
    print()
    print(table)
    if args.out:
        gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
        context = (
            "# Weight prediction cost\n\n"
            f"Command: `python {' '.join(sys.argv)}`\n\n"
            f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads{gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}.\n\n"
            "Medians over interleaved repeats. `ratio to step` = predict+restore time / the same optimizer's "
            "foreach `step()`; `overhead` = whole training step with prediction vs without "
            "(median of per-round ratios; noisy on a shared CPU) and, more precisely, the predict+restore time as "
            "a share of a training step; `extra MiB` = the "
            "predictor's spare buffers (one copy of the parameters, allocated once); `compile=True` = the "
            "opt-in torch.compile-fused prediction (Adam family only; n/a for SGDM). `method` = the registered "
            "rule, or extrapolation of the last update (predict+restore then includes the step pre-hook's copy of "
            "theta_{t-1}; the step without prediction runs without that hook); naive and compiled: rules only.\n\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(context + table)
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
