"""Benchmark the CIFAR input pipeline: xgrad's on-device loader against the conventional PIL + DataLoader one.

On real CIFAR-10 (standard python layout under ROOT), ResNet-20, batch 128, one device, prints samples/s of
(1) the input pipeline alone and (2) whole training steps (forward, backward, SGDM step) fed by each pipeline,
and our/conventional ratios. The conventional pipeline is what ``torchvision.datasets.CIFAR10`` does: a Dataset
that yields PIL images through ``RandomCrop(32, 4)``, ``RandomHorizontalFlip``, ``ToTensor`` and ``Normalize``,
read by a ``DataLoader`` with worker processes (the torchvision class itself refuses a rebuilt copy's md5 sums).

    python ../shared/data/build_cifar10.py ~/.cache/xgrad-shared      # the shared real copy, here
    python scripts/bench_pipeline.py --root ~/.cache/xgrad-shared --out results/bench_pipeline.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from xgrad.data import DeviceImageLoader, load_cifar
from xgrad.models import create_model


class PILCifar(Dataset):
    """The conventional CIFAR dataset: one PIL image per item, transformed on the CPU."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC uint8, as torchvision stores it
        self.labels = labels.tolist()
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])  # fmt: skip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def time_pipeline(batches, limit: int) -> tuple[float, int]:
    """Seconds and samples to draw ``limit`` batches."""
    start, seen = time.perf_counter(), 0
    for i, (x, _) in enumerate(batches):
        seen += len(x)
        if i + 1 == limit:
            break
    return time.perf_counter() - start, seen


def time_training(batches, model: nn.Module, device: torch.device, limit: int) -> tuple[float, int]:
    """Seconds and samples for ``limit`` training steps of ResNet-20 fed by ``batches``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True)
    model.train()
    start, seen = time.perf_counter(), 0
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        seen += len(x)
        if i + 1 == limit:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("~/.cache/xgrad-shared").expanduser())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    parser.add_argument("--train-batches", type=int, default=0, help="training steps per measurement (0: an epoch)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)

    data = load_cifar("cifar10", args.root, download=False)
    ours = DeviceImageLoader(data.train_images, data.train_labels, 128, data.mean, data.std, train=True,
                             drop_last=True, device=device)  # fmt: skip
    conventional = DataLoader(PILCifar(data.train_images, data.train_labels, data.mean, data.std), batch_size=128,
                              shuffle=True, drop_last=True, num_workers=args.workers,
                              pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)  # fmt: skip
    epoch = len(ours)
    rows = []
    # Pipeline alone: a whole epoch each (the conventional one once warm, after its workers started).
    time_pipeline(conventional, 5)
    for name, loader in (("ours", ours), ("conventional", conventional)):
        seconds, seen = time_pipeline(loader, epoch)
        rows.append(("pipeline alone", name, seen / seconds))
    limit = args.train_batches or epoch
    for name, loader in (("ours", ours), ("conventional", conventional)):
        torch.manual_seed(0)
        model = create_model("resnet20").to(device)
        time_training(loader, model, device, 3)  # warm-up (allocator, oneDNN/cuDNN kernels)
        seconds, seen = time_training(loader, model, device, limit)
        rows.append((f"training ({limit} steps)", name, seen / seconds))

    lines = ["| measurement | ours samples/s | conventional samples/s | ratio |", "|---|---|---|---|"]
    for i in range(0, len(rows), 2):
        what, _, a = rows[i]
        _, _, b = rows[i + 1]
        lines.append(f"| {what} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        gpu = f", GPU {torch.cuda.get_device_name()}" if device.type == "cuda" else ""
        text = (
            "# Input pipeline: on-device batches vs PIL + DataLoader\n\n"
            f"Command: `python {' '.join(sys.argv)}`\n\n"
            f"Data: real CIFAR-10 training set (50,000 images), batch 128, ResNet-20, SGDM, device {device}{gpu}.\n"
            f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, conventional DataLoader with "
            f"{args.workers} workers; Python {platform.python_version()}, torch {torch.__version__}.\n\n" + table
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
