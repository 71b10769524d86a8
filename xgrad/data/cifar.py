"""CIFAR-10 / CIFAR-100 read straight from the standard python pickles, plus the in-memory dataset type.

The pickles are parsed and their structure validated here instead of going through
``torchvision.datasets.CIFAR10``: torchvision checks per-file md5 sums, which rejects rebuilt copies whose
content is fine, and its failures surface as tracebacks from deep inside the library.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DataError", "ImageDataset", "ImageSplit", "load_cifar", "split_validation"]


class DataError(RuntimeError):
    """A dataset is missing, cannot be downloaded, or is corrupt; the message says how to fix it."""


@dataclass(frozen=True)
class ImageSplit:
    """One split of an image set: uint8 images [N, C, H, W] and int64 labels [N]."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.labels)


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image set held in CPU memory, with the per-channel statistics used to normalise it.

    Images are uint8 tensors [N, 3, H, W]; labels are int64 tensors [N]. ``mean`` and ``std`` are per-channel
    figures on the [0, 1] scale (pixel / 255).
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    synthetic: bool
    name: str

    @property
    def train(self) -> ImageSplit:
        """The training split."""
        return ImageSplit(self.train_images, self.train_labels)

    @property
    def test(self) -> ImageSplit:
        """The test split."""
        return ImageSplit(self.test_images, self.test_labels)

    def take_subset(self, n: int) -> ImageDataset:
        """A copy keeping only the first ``n`` training examples (the test split is unchanged)."""
        if not 0 < n <= len(self.train_labels):
            raise ValueError(f"take_subset: n must be in [1, {len(self.train_labels)}], got {n}")
        return replace(self, train_images=self.train_images[:n], train_labels=self.train_labels[:n])

    def split_validation(self, val_size: int, seed: int) -> tuple[ImageSplit, ImageSplit]:
        """Hold out ``val_size`` random training examples; returns (train, val), deterministic in ``seed``.

        Both parts keep the original relative order, so the result depends only on (seed, val_size, data).
        """
        n = len(self.train_labels)
        if not 0 < val_size < n:
            raise ValueError(f"split_validation: val_size must be in [1, {n - 1}], got {val_size}")
        # A private CPU generator, so the split is identical on every machine and ignores the global RNG.
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        val_idx = perm[:val_size].sort().values
        train_idx = perm[val_size:].sort().values
        return (
            ImageSplit(self.train_images[train_idx], self.train_labels[train_idx]),
            ImageSplit(self.train_images[val_idx], self.train_labels[val_idx]),
        )


def split_validation(dataset: ImageDataset, val_size: int, seed: int) -> tuple[ImageSplit, ImageSplit]:
    """Function form of :meth:`ImageDataset.split_validation`."""
    return dataset.split_validation(val_size, seed)


@dataclass(frozen=True)
class _CifarSpec:
    name: str
    title: str
    folder: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


_SPECS = {
    "cifar10": _CifarSpec(
        name="cifar10",
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _CifarSpec(
        name="cifar100",
        title="CIFAR-100",
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
}


def load_cifar(name: str, root: str | Path, download: bool = True) -> ImageDataset:
    """Load CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``) from ``root``.

    Expects the standard python layout (``root/cifar-10-batches-py/`` or ``root/cifar-100-python/``). When it
    is absent and ``download`` is true, the official archive is fetched into ``root`` (its md5 checked) and
    extracted. Raises :class:`DataError` with instructions when the data is missing, cannot be downloaded,
    or a file is corrupt.
    """
    try:
        spec = _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown CIFAR dataset {name!r}; expected one of {sorted(_SPECS)}") from None
    root = check_data_root(root)
    folder = root / spec.folder
    if _missing_files(spec, folder):
        _fetch(spec, root, download)
    return _read_dataset(spec, folder)


def check_data_root(root: str | Path) -> Path:
    """``root`` as a path; a :class:`DataError` when it (or a folder above it) is a file, not a folder."""
    root = Path(root).expanduser()
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == root else f"lies under the file {existing}"
        raise DataError(
            f"invalid data_root={str(root)!r}: it {where}, not a folder; set data_root=/a/folder (or "
            "XGRAD_DATA) to the folder that holds, or will hold, the data sets"
        )
    return root


def _missing_files(spec: _CifarSpec, folder: Path) -> list[str]:
    return [f for f in spec.files if not (folder / f).is_file()]


def _fetch(spec: _CifarSpec, root: Path, download: bool) -> None:
    if not download:
        raise DataError(_missing_message(spec, root, "Automatic download is off (download=False)."))
    # Imported lazily: torchvision is heavy and only needed on this path.
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(spec.url, download_root=root, filename=spec.archive, md5=spec.md5)
    except Exception as exc:  # network, disk, md5 and archive errors all get the same actionable answer
        reason = f"Downloading {spec.url} failed: {type(exc).__name__}: {exc}"
        raise DataError(_missing_message(spec, root, reason)) from exc
    if _missing_files(spec, root / spec.folder):
        reason = f"The archive {spec.archive} was downloaded and extracted but did not produce those files."
        raise DataError(_missing_message(spec, root, reason))


def _missing_message(spec: _CifarSpec, root: Path, reason: str) -> str:
    folder = root.resolve() / spec.folder
    missing = _missing_files(spec, folder)
    where = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
    return (
        f"{spec.title} not found: data_root={str(root)!r} ({root.resolve()}); the folder {folder} {where}.\n"
        f"Expected {folder}/ containing: {', '.join(spec.files)}.\n"
        f"{reason}\n"
        "To fix, either:\n"
        f"  - download {spec.url} (md5 {spec.md5}) and extract it into data_root,\n"
        f"    e.g. `mkdir -p {root.resolve()} && tar -xzf {spec.archive} -C {root.resolve()}`, which creates "
        f"{spec.folder}/; or\n"
        f"  - point the suite at a directory that already contains {spec.folder}/: "
        "set data_root=/that/dir (a config override) or the environment variable XGRAD_DATA=/that/dir."
    )


def _read_dataset(spec: _CifarSpec, folder: Path) -> ImageDataset:
    train = [_read_batch(spec, folder / f) for f in spec.train_files]
    test_images, test_labels = _read_batch(spec, folder / spec.test_file)
    return ImageDataset(
        train_images=torch.cat([images for images, _ in train]),
        train_labels=torch.cat([labels for _, labels in train]),
        test_images=test_images,
        test_labels=test_labels,
        num_classes=spec.num_classes,
        class_names=_read_class_names(spec, folder / spec.meta_file),
        mean=spec.mean,
        std=spec.std,
        synthetic=False,
        name=spec.name,
    )


def _corrupt(spec: _CifarSpec, path: Path, problem: str) -> DataError:
    return DataError(
        f"Corrupt {spec.title} file {path}: {problem}.\n"
        f"Delete the folder {path.parent} and load again with download=True to fetch a fresh copy, or "
        f"re-extract the official archive {spec.url} into {path.parent.parent}."
    )


def _unpickle(spec: _CifarSpec, path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # encoding="bytes" because the official pickles were written by Python 2 with str keys.
            obj = pickle.load(f, encoding="bytes")
    except Exception as exc:  # a damaged pickle can fail in many ways (EOFError, UnpicklingError, ...)
        raise _corrupt(spec, path, f"cannot be unpickled ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise _corrupt(spec, path, f"expected a dict, found {type(obj).__name__}")
    # Copies re-pickled under Python 3 may use str keys; accept them alongside the official bytes keys.
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _read_batch(spec: _CifarSpec, path: Path) -> tuple[Tensor, Tensor]:
    batch = _unpickle(spec, path)
    missing = [key.decode() for key in (b"data", spec.label_key) if key not in batch]
    if missing:
        raise _corrupt(spec, path, f"missing key(s) {missing}; found {sorted(map(repr, batch))}")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _corrupt(spec, path, f"'data' must be a uint8 array of shape [N, 3072], found {found}")
    labels = _check_labels(spec, path, batch[spec.label_key], len(data))
    # Rows are channel-planar: 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32.
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return images, labels


def _check_labels(spec: _CifarSpec, path: Path, raw: object, n: int) -> Tensor:
    key = spec.label_key.decode()
    try:
        labels = np.asarray(raw)
    except Exception as exc:  # ragged or odd objects; report them like any other structural fault
        raise _corrupt(spec, path, f"'{key}' is not a label list ({exc})") from exc
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        found = f"{labels.dtype} {labels.shape}"
        raise _corrupt(spec, path, f"'{key}' must be a flat list of ints, found {found}")
    if len(labels) != n:
        raise _corrupt(spec, path, f"{len(labels)} labels for {n} images")
    if n and (labels.min() < 0 or labels.max() >= spec.num_classes):
        bad = labels[(labels < 0) | (labels >= spec.num_classes)][0]
        raise _corrupt(spec, path, f"label {bad} outside [0, {spec.num_classes})")
    return torch.from_numpy(labels.astype(np.int64))


def _read_class_names(spec: _CifarSpec, path: Path) -> tuple[str, ...]:
    meta = _unpickle(spec, path)
    names = meta.get(spec.names_key)
    if not isinstance(names, Sequence) or len(names) != spec.num_classes:
        found = f"{len(names)} entries" if isinstance(names, Sequence) else repr(type(names).__name__)
        key = spec.names_key.decode()
        raise _corrupt(spec, path, f"'{key}' must list {spec.num_classes} names, found {found}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
