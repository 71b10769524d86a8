"""Tests for xgrad.data: CIFAR pickle loading and its errors, the demo image set, and the device loader."""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.utils as tv_utils
from torch.nn import functional as F

from xgrad.data import (
    DataError,
    DeviceImageLoader,
    ImageDataset,
    load_cifar,
    make_demo_images,
    split_validation,
)

# name -> (folder, train files, test file, meta file, label key, names key, num classes)
LAYOUTS = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        b"labels",
        b"label_names",
        10,
    ),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", b"fine_labels", b"fine_label_names", 100),
}


def _dump(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _batch(name: str, images: np.ndarray, labels: np.ndarray) -> dict:
    """One pickle in the official format: channel-planar uint8 rows [N, 3072] and a list of int labels."""
    n = len(images)
    batch = {b"batch_label": b"test", b"data": images.reshape(n, 3072), b"filenames": [b"x.png"] * n}
    if name == "cifar100":
        batch[b"fine_labels"] = labels.tolist()
        batch[b"coarse_labels"] = (labels // 5).tolist()
    else:
        batch[b"labels"] = labels.tolist()
    return batch


def _write_cifar(root: Path, name: str, n_per_file: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny copy of the standard python layout; returns the images [N, 3, 32, 32] and labels written."""
    folder, train_files, test_file, meta_file, _, names_key, num_classes = LAYOUTS[name]
    rng = np.random.default_rng(seed)
    out = root / folder
    out.mkdir(parents=True)
    written = {"train_x": [], "train_y": []}
    for f in [*train_files, test_file]:
        x = rng.integers(0, 256, size=(n_per_file, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, num_classes, size=n_per_file)
        _dump(out / f, _batch(name, x, y))
        if f == test_file:
            written["test_x"], written["test_y"] = x, y
        else:
            written["train_x"].append(x)
            written["train_y"].append(y)
    meta = {names_key: [f"class{i}".encode() for i in range(num_classes)]}
    if name == "cifar100":
        meta[b"coarse_label_names"] = [f"super{i}".encode() for i in range(20)]
    _dump(out / meta_file, meta)
    written["train_x"] = np.concatenate(written["train_x"])
    written["train_y"] = np.concatenate(written["train_y"])
    return written


# ----------------------------------------------------------------------------------------------- CIFAR loading


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_load_cifar_reads_standard_layout(tmp_path: Path, name: str) -> None:
    written = _write_cifar(tmp_path, name)
    ds = load_cifar(name, tmp_path, download=False)
    n_train = 4 * len(LAYOUTS[name][1])
    assert ds.name == name and not ds.synthetic
    assert ds.num_classes == LAYOUTS[name][6] == len(ds.class_names)
    assert ds.class_names[:2] == ("class0", "class1")
    assert ds.train_images.shape == (n_train, 3, 32, 32) and ds.train_images.dtype == torch.uint8
    assert ds.train_labels.dtype == torch.int64 and ds.test_images.shape == (4, 3, 32, 32)
    assert torch.equal(ds.train_images, torch.from_numpy(written["train_x"]))
    assert torch.equal(ds.train_labels, torch.from_numpy(written["train_y"]))
    assert torch.equal(ds.test_images, torch.from_numpy(written["test_x"]))
    assert torch.equal(ds.test_labels, torch.from_numpy(written["test_y"]))
    assert len(ds.mean) == len(ds.std) == 3


def test_pixel_layout_is_channel_planar(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    data = np.zeros((4, 3072), dtype=np.uint8)
    data[1, 2 * 1024 + 3 * 32 + 4] = 200  # image 1, blue plane, row 3, column 4
    data[2, 0 * 1024 + 31 * 32 + 0] = 77  # image 2, red plane, row 31, column 0
    batch[b"data"] = data
    _dump(path, batch)
    images = load_cifar("cifar10", tmp_path, download=False).train_images
    assert images[1, 2, 3, 4] == 200 and images[2, 0, 31, 0] == 77
    assert int(images[:4].sum()) == 277


def test_load_cifar_accepts_other_md5_and_str_keys(tmp_path: Path) -> None:
    """Rebuilt copies (other md5 sums, keys pickled as str) load as long as their structure is right."""
    _write_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    _dump(path, {k.decode(): v for k, v in batch.items()})
    assert len(load_cifar("cifar10", tmp_path, download=False).test_labels) == 4


def test_unknown_name_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cifar10"):
        load_cifar("cifar1000", tmp_path)


def _assert_actionable_missing(message: str, root: Path, folder: str, files: list[str]) -> None:
    assert str(root) in message and "data_root" in message and "XGRAD_DATA" in message
    assert folder in message and all(f in message for f in files)
    assert "https://www.cs.toronto.edu/~kriz/" in message and "extract" in message


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_missing_data_without_download(tmp_path: Path, name: str) -> None:
    folder, train_files, test_file, meta_file, *_ = LAYOUTS[name]
    with pytest.raises(DataError) as info:
        load_cifar(name, tmp_path / "nowhere", download=False)
    _assert_actionable_missing(str(info.value), tmp_path / "nowhere", folder, [*train_files, test_file, meta_file])
    assert "download=False" in str(info.value)


def test_missing_data_download_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(url: str, download_root: object, **kwargs: object) -> None:
        calls.append((url, kwargs.get("md5")))
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path, download=True)
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")]
    message = str(info.value)
    _assert_actionable_missing(message, tmp_path, "cifar-10-batches-py", ["data_batch_5", "batches.meta"])
    assert "no network here" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_download_then_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_download(url: str, download_root: Path, **kwargs: object) -> None:
        assert kwargs["md5"] == "eb9058c3a382ffc7106e4002c42a8d85"
        _write_cifar(Path(download_root), "cifar100")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    assert load_cifar("cifar100", tmp_path).num_classes == 100


def test_partial_folder_names_missing_files(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks data_batch_3"):
        load_cifar("cifar10", tmp_path, download=False)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _rewrite(path: Path, change: dict) -> None:
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="bytes")
    obj.update(change)
    _dump(path, {k: v for k, v in obj.items() if v is not None})


@pytest.mark.parametrize(
    ("file", "damage", "problem"),
    [
        ("data_batch_2", _truncate, "cannot be unpickled"),
        ("test_batch", lambda p: p.write_bytes(b"not a pickle"), "cannot be unpickled"),
        ("data_batch_4", lambda p: _dump(p, [1, 2, 3]), "expected a dict"),
        ("data_batch_1", lambda p: _rewrite(p, {b"data": np.zeros((4, 3000), np.uint8)}), r"\[N, 3072\]"),
        ("data_batch_1", lambda p: _rewrite(p, {b"data": np.zeros((4, 3072), np.float32)}), "uint8"),
        ("data_batch_5", lambda p: _rewrite(p, {b"labels": [0, 1, 2, 10]}), r"label 10 outside \[0, 10\)"),
        ("data_batch_5", lambda p: _rewrite(p, {b"labels": [0, 1, -1, 2]}), "label -1 outside"),
        ("test_batch", lambda p: _rewrite(p, {b"labels": [0, 1, 2]}), "3 labels for 4 images"),
        ("test_batch", lambda p: _rewrite(p, {b"labels": None}), "missing key"),
        ("batches.meta", lambda p: _rewrite(p, {b"label_names": [b"a"]}), "must list 10 names"),
    ],
)
def test_corrupt_file_names_the_file(tmp_path: Path, file: str, damage, problem: str) -> None:
    _write_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / file
    damage(path)
    with pytest.raises(DataError, match=problem) as info:
        load_cifar("cifar10", tmp_path, download=False)
    assert str(path) in str(info.value)


def test_cifar100_label_range_uses_fine_labels(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar100")
    path = tmp_path / "cifar-100-python" / "train"
    _rewrite(path, {b"fine_labels": [0, 99, 100, 5]})
    with pytest.raises(DataError, match=r"label 100 outside \[0, 100\)"):
        load_cifar("cifar100", tmp_path, download=False)


# ------------------------------------------------------------------------------------------ splits and subsets


def _indexed_dataset(n: int) -> ImageDataset:
    """Images whose first pixel and label both hold the example's index, so splits can be traced."""
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    labels = torch.arange(n)
    return ImageDataset(images, labels, images[:5], labels[:5], n, tuple(map(str, range(n))),
                        (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), True, "indexed")  # fmt: skip


def test_split_validation_is_deterministic_and_disjoint() -> None:
    ds = _indexed_dataset(100)
    train, val = split_validation(ds, 20, seed=1)
    again_train, again_val = ds.split_validation(20, seed=1)
    _, other_val = split_validation(ds, 20, seed=2)
    assert len(train) == 80 and len(val) == 20
    assert torch.equal(val.labels, again_val.labels) and torch.equal(train.images, again_train.images)
    assert not torch.equal(val.labels, other_val.labels)
    assert sorted(torch.cat([train.labels, val.labels]).tolist()) == list(range(100))
    assert torch.equal(train.images[:, 0, 0, 0].long(), train.labels)  # images and labels stay paired
    with pytest.raises(ValueError):
        split_validation(ds, 100, seed=0)


def test_take_subset_keeps_first_examples() -> None:
    ds = _indexed_dataset(50)
    sub = ds.take_subset(7)
    assert sub.train_labels.tolist() == list(range(7)) and len(sub.train_images) == 7
    assert sub.test_images is ds.test_images and sub.name == ds.name
    with pytest.raises(ValueError):
        ds.take_subset(51)


# ------------------------------------------------------------------------------------------------ demo images


def test_demo_images_shapes_balance_and_determinism() -> None:
    a = make_demo_images(n_train=200, n_test=50, seed=3)
    b = make_demo_images(n_train=200, n_test=50, seed=3)
    c = make_demo_images(n_train=200, n_test=50, seed=4)
    assert a.name == "demo_images" and a.synthetic and a.num_classes == 10 == len(a.class_names)
    assert a.train_images.shape == (200, 3, 32, 32) and a.train_images.dtype == torch.uint8
    assert a.test_images.shape == (50, 3, 32, 32) and a.train_labels.dtype == torch.int64
    assert torch.bincount(a.train_labels, minlength=10).tolist() == [20] * 10
    assert torch.bincount(a.test_labels, minlength=10).tolist() == [5] * 10
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train_images, c.train_images)
    pixels = a.train_images.permute(1, 0, 2, 3).reshape(3, -1).double() / 255
    assert np.allclose(a.mean, pixels.mean(1).tolist()) and np.allclose(a.std, pixels.std(1).tolist())


def test_demo_test_set_does_not_depend_on_train_size() -> None:
    small, large = make_demo_images(30, 20, seed=0), make_demo_images(60, 20, seed=0)
    assert torch.equal(small.test_images, large.test_images)


def test_demo_mean_colour_does_not_reveal_class() -> None:
    ds = make_demo_images(n_train=2000, n_test=1000, seed=0)

    def colour(x: torch.Tensor) -> torch.Tensor:
        return x.float().mean((2, 3))

    centroids = torch.stack([colour(ds.train_images)[ds.train_labels == c].mean(0) for c in range(10)])
    predicted = torch.cdist(colour(ds.test_images), centroids).argmin(1)
    assert (predicted == ds.test_labels).float().mean() < 0.2  # chance is 0.1


# ------------------------------------------------------------------------------------------------ device loader


def _random_split(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.arange(n)


MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _batches(loader: DeviceImageLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


@pytest.mark.parametrize(("drop_last", "sizes"), [(False, [4, 4, 2]), (True, [4, 4])])
def test_loader_batch_shapes(drop_last: bool, sizes: list[int]) -> None:
    images, labels = _random_split(10)
    loader = DeviceImageLoader(images, labels, 4, MEAN, STD, train=True, drop_last=drop_last, device="cpu")
    batches = _batches(loader)
    assert len(loader) == len(batches) == len(sizes)
    assert [len(y) for _, y in batches] == sizes
    for x, y in batches:
        assert x.shape == (len(y), 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_loader_dtype_and_channels_last() -> None:
    images, labels = _random_split(6)
    loader = DeviceImageLoader(images, labels, 3, MEAN, STD, train=True, dtype=torch.bfloat16, channels_last=True)
    x, _ = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)


def test_eval_loader_normalises_in_order() -> None:
    images, labels = _random_split(10)
    loader = DeviceImageLoader(images, labels, 4, MEAN, STD, train=False)
    x = torch.cat([x for x, _ in loader])
    y = torch.cat([y for _, y in loader])
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (images.float() / 255 - mean) / std, atol=1e-5, rtol=1e-5)
    assert torch.equal(y, labels)


def _unnormalised(x: torch.Tensor) -> torch.Tensor:
    """Back to uint8 pixels for a loader built with mean 0 and std 1."""
    return (x * 255).round().to(torch.uint8)


def _crop_candidates(image: torch.Tensor, pad: int = 4) -> list[tuple[int, int, bool, torch.Tensor]]:
    padded = F.pad(image, (pad, pad, pad, pad))
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + 32, dx : dx + 32]
            out += [(dy, dx, False, crop), (dy, dx, True, crop.flip(-1))]
    return out


def test_augmentation_is_a_crop_and_flip_of_the_padded_image() -> None:
    images, labels = _random_split(64)
    loader = DeviceImageLoader(images, labels, 64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), train=True, seed=5)
    x, y = next(iter(loader))
    assert sorted(y.tolist()) == list(range(64)) and y.tolist() != list(range(64))  # shuffled
    pixels = _unnormalised(x)
    seen = set()
    for k in range(64):
        matches = [(dy, dx, fl) for dy, dx, fl, crop in _crop_candidates(images[y[k]]) if torch.equal(crop, pixels[k])]
        assert len(matches) == 1, f"sample {k} is not a unique crop/flip: {matches}"
        seen.add(matches[0])
    offsets, flips = {(dy, dx) for dy, dx, _ in seen}, {fl for *_, fl in seen}
    assert len(offsets) > 10 and flips == {True, False}


def _run(epoch: int | None, seed: int = 0, **kwargs: object) -> list[tuple[torch.Tensor, torch.Tensor]]:
    images, labels = _random_split(20)
    loader = DeviceImageLoader(images, labels, 8, MEAN, STD, train=True, seed=seed, **kwargs)
    if epoch is not None:
        loader.set_epoch(epoch)
    return _batches(loader)


def _same(a: list, b: list) -> bool:
    return all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))


def test_loader_reproducible_per_seed_and_epoch() -> None:
    assert _same(_run(3), _run(3))
    assert not _same(_run(3), _run(4))
    assert not _same(_run(3, seed=0), _run(3, seed=1))
    images, labels = _random_split(20)
    loader = DeviceImageLoader(images, labels, 8, MEAN, STD, train=True)
    first, second = _batches(loader), _batches(loader)  # a plain loop advances the epoch itself
    assert _same(first, _run(0)) and _same(second, _run(1))


def test_sharding_gives_disjoint_equal_slices() -> None:
    shards = [_run(2, rank=r, world_size=3) for r in range(3)]
    seen = [torch.cat([y for _, y in shard]) for shard in shards]
    assert [len(s) for s in seen] == [6, 6, 6]
    assert len(set(torch.cat(seen).tolist())) == 18
    # A sample's augmentation depends on (seed, epoch, sample) only, not on how the data is sharded.
    whole = dict(zip(torch.cat([y for _, y in _run(2)]).tolist(), torch.cat([x for x, _ in _run(2)]), strict=True))
    for shard in shards:
        for x, y in shard:
            for xi, yi in zip(x, y.tolist(), strict=True):
                assert torch.equal(xi, whole[yi])


def test_loader_rejects_bad_arguments() -> None:
    images, labels = _random_split(4)
    with pytest.raises(ValueError):
        DeviceImageLoader(images.float(), labels, 2, MEAN, STD, train=True)
    with pytest.raises(ValueError):
        DeviceImageLoader(images, labels[:3], 2, MEAN, STD, train=True)
    with pytest.raises(ValueError):
        DeviceImageLoader(images, labels, 2, MEAN, STD, train=True, rank=2, world_size=2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda_matches_cpu() -> None:
    cpu = _run(1)
    gpu = _run(1, device="cuda")
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        # Crops and order are exact; the normalising multiply-add may be fused differently on the GPU.
        torch.testing.assert_close(xg.cpu(), xc, atol=1e-6, rtol=0)
        assert torch.equal(yg.cpu(), yc)
