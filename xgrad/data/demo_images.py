"""A small generated 10-class image set for smoke tests and demos that must run without any download.

Each class is a distinct shape or texture (four stripe orientations, checkerboard, concentric rings, disk,
ring, cross, square outline) drawn at a random position, scale, rotation jitter, stripe frequency and phase,
in a random foreground/background colour pair over a random background gradient, plus pixel noise. Colours
and position carry no class information (classifying by mean colour is at chance), so a model has to
recognise spatial structure; ResNet-20 reaches about 85% test accuracy after ~150 SGD steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .cifar import ImageDataset

__all__ = ["DEMO_CLASS_NAMES", "make_demo_images"]

DEMO_CLASS_NAMES = (
    "stripes_0",
    "stripes_45",
    "stripes_90",
    "stripes_135",
    "checkerboard",
    "rings",
    "disk",
    "annulus",
    "cross",
    "square",
)

_SIZE = 32
_ROTATION_JITTER = math.radians(10.0)  # keeps stripe classes (45 deg apart) apart


def make_demo_images(n_train: int = 5000, n_test: int = 1000, seed: int = 0) -> ImageDataset:
    """Generate the demo image set: uint8 [N, 3, 32, 32] images, class-balanced labels, deterministic in seed.

    Train and test are drawn from independent streams, so the test set does not change with ``n_train``.
    ``mean``/``std`` are measured on the generated training images.
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"make_demo_images: n_train and n_test must be positive, got {n_train}, {n_test}")
    train_images, train_labels = _generate(n_train, _stream(seed, 0))
    test_images, test_labels = _generate(n_test, _stream(seed, 1))
    mean, std = _channel_stats(train_images)
    return ImageDataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=len(DEMO_CLASS_NAMES),
        class_names=DEMO_CLASS_NAMES,
        mean=mean,
        std=std,
        synthetic=True,
        name="demo_images",
    )


def _stream(seed: int, split: int) -> torch.Generator:
    # Distinct, well-separated seeds per split; a CPU generator keeps the data identical on every machine.
    return torch.Generator().manual_seed(seed * 7919 + split * 104729 + 1)


def _uniform(gen: torch.Generator, n: int, low: float, high: float, *shape: int) -> Tensor:
    return low + (high - low) * torch.rand(n, *shape, generator=gen)


def _generate(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    num_classes = len(DEMO_CLASS_NAMES)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    u, v = _local_coords(n, labels, gen)
    freq = _uniform(gen, n, 1.8, 2.8)[:, None, None]  # stripe cycles per shape radius
    phase = _uniform(gen, n, 0.0, 2 * math.pi)[:, None, None]
    mask = torch.empty(n, _SIZE, _SIZE)
    # Per-class loop (10 cheap iterations); everything inside is batched over that class's images.
    for c in range(num_classes):
        idx = (labels == c).nonzero().squeeze(1)
        if len(idx):
            mask[idx] = _shape_mask(c, u[idx], v[idx], freq[idx], phase[idx])
    images = _paint(mask, gen)
    return (images * 255).round().clamp(0, 255).to(torch.uint8), labels.to(torch.int64)


def _local_coords(n: int, labels: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Pixel coordinates in each image's shape frame: centred on the shape, rotated, scaled to its radius."""
    axis = torch.linspace(-1.0, 1.0, _SIZE)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    cx = _uniform(gen, n, -0.3, 0.3)[:, None, None]
    cy = _uniform(gen, n, -0.3, 0.3)[:, None, None]
    radius = _uniform(gen, n, 0.5, 0.8)[:, None, None]
    # Stripe classes 0-3 are told apart by orientation; the other shapes stay upright (round ones do not care),
    # which keeps each class compact enough to be learnt in a few hundred steps.
    base = torch.where(labels < 4, labels.float() * (math.pi / 4), torch.zeros(n))
    angle = (base + _uniform(gen, n, -_ROTATION_JITTER, _ROTATION_JITTER))[:, None, None]
    dx, dy = x - cx, y - cy
    u = (dx * torch.cos(angle) + dy * torch.sin(angle)) / radius
    v = (-dx * torch.sin(angle) + dy * torch.cos(angle)) / radius
    return u, v


def _shape_mask(c: int, u: Tensor, v: Tensor, freq: Tensor, phase: Tensor) -> Tensor:
    """Foreground weight in [0, 1] for class ``c`` at local coordinates (u, v)."""
    rho = torch.sqrt(u * u + v * v)
    window = torch.sigmoid((1.0 - rho) * 10.0)  # soft disk bounding the textured classes
    if c < 4:
        # Stripes run along u; the class's orientation lives in the rotation of (u, v).
        return window * (0.5 + 0.5 * torch.cos(2 * math.pi * freq * v + phase))
    if c == 4:
        cells = torch.sin(math.pi * freq * u + phase) * torch.sin(math.pi * freq * v)
        return window * torch.sigmoid(cells * 8.0)
    if c == 5:
        return window * (0.5 + 0.5 * torch.cos(2 * math.pi * freq * rho + phase))
    if c == 6:
        return torch.sigmoid((0.8 - rho) * 14.0)
    if c == 7:
        return torch.exp(-(((rho - 0.75) / 0.16) ** 2))
    if c == 8:
        return torch.maximum(_bar(u, v), _bar(v, u))
    chebyshev = torch.maximum(u.abs(), v.abs())
    return torch.exp(-(((chebyshev - 0.7) / 0.13) ** 2))


def _bar(across: Tensor, along: Tensor) -> Tensor:
    """A soft bar of half-width 0.25 and half-length 1 (one arm pair of the cross)."""
    return torch.sigmoid((0.25 - across.abs()) * 14.0) * torch.sigmoid((1.0 - along.abs()) * 14.0)


def _paint(mask: Tensor, gen: torch.Generator) -> Tensor:
    """Blend class-independent random colours through the mask; add a background gradient and noise."""
    n = len(mask)
    background = _uniform(gen, n, 0.1, 0.9, 3)
    # Foreground shifted by 0.3-0.7 around the colour circle per channel: always visible, never class-bound.
    foreground = torch.remainder(background + _uniform(gen, n, 0.3, 0.7, 3), 1.0) * 0.8 + 0.1
    axis = torch.linspace(-1.0, 1.0, _SIZE)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    slope = _uniform(gen, n, -0.12, 0.12, 2, 1, 1)
    gradient = (slope[:, 0] * x + slope[:, 1] * y)[:, None]
    m = mask[:, None]
    image = background[:, :, None, None] * (1 - m) + foreground[:, :, None, None] * m + gradient
    noise_level = _uniform(gen, n, 0.03, 0.09)[:, None, None, None]
    return (image + noise_level * torch.randn(n, 3, _SIZE, _SIZE, generator=gen)).clamp(0.0, 1.0)


def _channel_stats(images: Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double() / 255.0
    mean, std = pixels.mean(dim=1).tolist(), pixels.std(dim=1).tolist()
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])
