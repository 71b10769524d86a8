"""Image classification on CIFAR-10/100 or the generated demo images, with on-device batches."""

from __future__ import annotations

from collections.abc import Iterator

from omegaconf import DictConfig
from torch import Tensor, nn

from xgrad.data import DeviceImageLoader, ImageDataset, load_cifar, make_demo_images
from xgrad.errors import ConfigError

from . import Runtime, Stats, Task, build_model, register_task

__all__ = ["ImageClassification", "load_image_dataset"]


def load_image_dataset(cfg: DictConfig) -> ImageDataset:
    """The dataset named by ``cfg.dataset.name``, read from (or downloaded into) ``cfg.data_root``."""
    name = cfg.dataset.name
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, cfg.data_root, download=cfg.dataset.get("download", True))
    if name == "demo_images":
        return make_demo_images(cfg.dataset.n_train, cfg.dataset.n_test, seed=cfg.dataset.get("data_seed", 0))
    raise ValueError(f"unknown image dataset {name!r}: known are cifar10, cifar100, demo_images")


@register_task("classification")
class ImageClassification(Task):
    """Cross-entropy training with random-crop and flip augmentation; accuracy as the metric."""

    metric = "acc"
    higher_is_better = True
    convolutional = True

    def __init__(self, cfg: DictConfig, runtime: Runtime) -> None:
        super().__init__(cfg, runtime)
        data = load_image_dataset(cfg)
        self.synthetic = data.synthetic
        n_train = len(data.train.labels)
        if cfg.train_subset is not None:
            if cfg.train_subset > n_train:
                raise ConfigError(f"invalid train_subset={cfg.train_subset!r}: accepted 1 to {n_train} "
                                  f"(the training images of {cfg.dataset.name}) or null")  # fmt: skip
            data = data.take_subset(int(cfg.train_subset))
            n_train = int(cfg.train_subset)
        if cfg.val_size:
            if cfg.val_size >= n_train:
                raise ConfigError(f"invalid val_size={cfg.val_size!r}: accepted 0 (no validation split) to "
                                  f"{n_train - 1} (held out of the {n_train} training images)")  # fmt: skip
            train, val = data.split_validation(int(cfg.val_size), seed=0)  # fixed: every seed sees the same split
        else:
            train, val = data.train, None

        def loader(split, train_mode: bool, batch_size: int) -> DeviceImageLoader:
            return DeviceImageLoader(
                split.images, split.labels, batch_size, data.mean, data.std, train=train_mode,
                device=runtime.device, channels_last=runtime.channels_last, seed=cfg.seed,
                rank=runtime.rank if train_mode else 0, world_size=runtime.world_size if train_mode else 1,
            )  # fmt: skip

        self.train_loader = loader(train, True, self.local_batch_size)
        self.eval_loaders = {"test": loader(data.test, False, int(cfg.eval_batch_size))}
        if val is not None:
            self.eval_loaders = {"val": loader(val, False, int(cfg.eval_batch_size)), **self.eval_loaders}
        self.model = runtime.place(build_model(cfg, data.num_classes))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=float(cfg.label_smoothing))

    @property
    def eval_splits(self) -> list[str]:
        return list(self.eval_loaders)

    def num_batches(self) -> int:
        return len(self.train_loader)

    def train_batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        self.train_loader.set_epoch(epoch)
        return iter(self.train_loader)

    def train_loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Stats]:
        images, labels = batch
        with self.runtime.autocast():
            logits = self.model(images)
            loss = self.criterion(logits, labels)
        return loss, _stats(logits, labels, loss)

    def evaluate(self, split: str) -> Stats:
        total: Stats = {}
        for images, labels in self.eval_loaders[split]:
            with self.runtime.autocast():
                logits = self.model(images)
                loss = nn.functional.cross_entropy(logits, labels)  # no smoothing: the plain test loss
            for k, v in _stats(logits, labels, loss).items():
                total[k] = total[k] + v if k in total else v
        return total

    def metrics(self, prefix: str, stats: Stats) -> dict[str, float]:
        count = float(stats["count"])
        return {f"{prefix}_loss": float(stats["loss_sum"]) / count, f"{prefix}_acc": float(stats["correct"]) / count}


def _stats(logits: Tensor, labels: Tensor, loss: Tensor) -> Stats:
    n = labels.numel()  # known on the host: no copy to the device, no sync
    return {"loss_sum": loss.detach().float() * n, "correct": (logits.argmax(1) == labels).sum(), "count": n}
