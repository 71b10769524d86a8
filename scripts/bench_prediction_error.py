"""What measuring the prediction error costs: one sample's time against one training step's.

    python scripts/bench_prediction_error.py --model resnet20 --threads 1      # CPU
    python scripts/bench_prediction_error.py --model resnet18 --device cuda

A training step is forward, backward and an SGDM step with weight prediction (batch 128, 32x32 images). A sample
is everything xgrad.prediction_error adds for one measured prediction (snapshots, the reached weights, the
norms), timed as the meter's ``around`` block minus the predictor's own block. The share of training is
``sample / step / every`` (one sample per ``every`` steps).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from xgrad import WeightPredictor
from xgrad.models import resnet, resnet_cifar
from xgrad.prediction_error import PredictionErrorMeter


def timed(fn, repeats: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` (after one warm-up call), synchronising the device around the loop."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["resnet20", "resnet18"], default="resnet20")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--samples", type=int, default=20, help="timed samples")
    parser.add_argument("--every", type=int, default=50, help="prediction_error_every, for the share printed")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = resnet_cifar.resnet20(10) if args.model == "resnet20" else resnet.resnet18(num_classes=10)
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=True)
    predictor = WeightPredictor(optimizer, steps=1.0)
    x, y = torch.randn(128, 3, 32, 32, device=device), torch.randint(0, 10, (128,), device=device)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with predictor:
            nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step = timed(train_step, args.steps, device)
    meter = PredictionErrorMeter(model.parameters(), steps=1.0, every=1)
    meter.start_epoch(0, 10**9)
    counter = iter(range(1, 10**9))

    def sample() -> None:  # a sampled step: snapshots and prediction; the next step's weights finish it
        with meter.around(predictor, next(counter)):
            pass

    def predict_only() -> None:
        with predictor:
            pass

    with_meter = timed(sample, args.samples, device)
    meter.end_epoch()
    alone = timed(predict_only, args.samples, device)
    cost = max(with_meter - alone, 0.0)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.model} ({params / 1e6:.2f}M parameters) on {device}: training step {step * 1e3:.1f} ms; "
        f"one sample {cost * 1e3:.2f} ms = {100 * cost / step:.2f}% of a step; "
        f"at prediction_error_every={args.every}: {100 * cost / step / args.every:.3f}% of training"
    )


if __name__ == "__main__":
    main()
