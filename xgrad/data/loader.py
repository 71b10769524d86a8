"""Mini-batches from a whole image split held on the training device, augmented with batched tensor ops.

CIFAR-sized sets fit in device memory many times over, so copying the uint8 split once and doing crop, flip
and normalisation on the device avoids the per-image PIL work and host-to-device copies that make
``torch.utils.data.DataLoader`` the bottleneck for small ResNets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["DeviceImageLoader"]


class DeviceImageLoader:
    """Iterate ``(images, labels)`` batches of a uint8 image split stored on ``device``.

    In train mode each epoch visits the samples in a fresh random order and applies the standard CIFAR
    augmentation: a random ``H x W`` crop of the image zero-padded by ``padding`` pixels, then a random
    horizontal flip. Eval mode keeps the stored order and does not augment. Batches are normalised to
    ``(pixel / 255 - mean) / std`` in ``dtype``.

    All randomness of an epoch (order, crop offsets, flips) comes from a CPU generator seeded by
    ``(seed, epoch)``, so batches are bit-identical on any device and a resumed run reproduces them by calling
    :meth:`set_epoch`. Each iteration uses the current epoch and then advances it by one, so a plain loop also
    gets a new order every epoch; calling ``set_epoch(e)`` before each epoch pins it explicitly.

    With ``world_size > 1`` each ``rank`` takes a disjoint slice of every epoch's order; all ranks get the
    same number of samples (``len(labels) // world_size``), so up to ``world_size - 1`` samples are skipped
    per epoch (a different set each epoch when shuffling).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        train: bool,
        drop_last: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        padding: int = 4,
    ) -> None:
        """Copy the split to ``device`` once; see the class docstring for the meaning of each option."""
        _check_args(images, labels, batch_size, mean, std, rank, world_size, padding)
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device, torch.uint8).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.train = train
        self.drop_last = drop_last
        self.dtype = dtype
        self.channels_last = channels_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.padding = padding
        self.epoch = 0
        # Folded into one multiply-add: (x / 255 - mean) / std == x * scale + shift.
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
        self._shift = (-mean_t / std_t).view(1, -1, 1, 1)

    @property
    def num_samples(self) -> int:
        """Samples this rank visits per epoch (before ``drop_last`` trims a partial batch)."""
        return len(self.labels) // self.world_size

    def __len__(self) -> int:
        """Number of batches per epoch."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration produces."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the batches of the current epoch, then advance the epoch by one."""
        order, offsets, flips = self._epoch_plan(self.epoch)
        self.epoch += 1
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            images = self.images[idx]
            if self.train:
                images = _crop_and_flip(images, offsets[idx], flips[idx], self.padding)
            yield self._normalise(images), self.labels[idx]

    def _epoch_plan(self, epoch: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """This rank's sample order and, in train mode, every sample's crop offset and flip for ``epoch``."""
        n = len(self.labels)
        if not self.train:
            order = torch.arange(n)
            offsets = flips = None
        else:
            gen = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
            order = torch.randperm(n, generator=gen)
            # Drawn per sample id (not per position) so a sample's augmentation ignores rank and world size.
            offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=gen).to(self.device)
            flips = (torch.rand(n, generator=gen) < 0.5).to(self.device)
        order = order[: self.num_samples * self.world_size][self.rank :: self.world_size]
        return order.to(self.device), offsets, flips

    def _normalise(self, images: Tensor) -> Tensor:
        out = (images.float() * self._scale + self._shift).to(self.dtype)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out


def _check_args(
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    rank: int,
    world_size: int,
    padding: int,
) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be [N] with N={len(images)}, got {tuple(labels.shape)}")
    channels = images.shape[1]
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"mean and std need {channels} entries each and std > 0, got {mean}, {std}")
    if batch_size < 1 or padding < 0:
        raise ValueError(f"batch_size must be >= 1 and padding >= 0, got {batch_size}, {padding}")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if len(images) < world_size:
        raise ValueError(f"{len(images)} samples cannot be shared among {world_size} ranks")


def _mix_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed from (seed, epoch) with no collisions between nearby pairs."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _crop_and_flip(images: Tensor, offsets: Tensor, flips: Tensor, padding: int) -> Tensor:
    """Per-sample crops of the zero-padded batch at ``offsets`` (row, col), mirrored where ``flips``.

    One gather over the flattened padded images does both: each output pixel reads its source pixel through
    a per-sample index, so there is no Python loop over samples.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    row_src = offsets[:, :1] + torch.arange(h, device=images.device)  # [B, H]
    cols = torch.arange(w, device=images.device)
    col_src = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - cols, cols)  # [B, W]
    flat = row_src[:, :, None] * (w + 2 * padding) + col_src[:, None, :]  # [B, H, W]
    index = flat.view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, index).view(b, c, h, w)
