"""DenseNet-121 for CIFAR, as in kuangliu/pytorch-cifar (Huang et al. 2017, DenseNet-BC).

Growth rate 32, dense blocks of 6/12/24/16 bottleneck layers, transitions with compression
0.5, and a 3x3 stem conv with 2*growth channels and no max-pool, so 32x32 inputs go through
the blocks at 32/16/8/4.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xgrad.models import register_model

__all__ = ["DenseBottleneck", "DenseNet", "Transition", "densenet121"]


class DenseBottleneck(nn.Module):
    """BN-ReLU-1x1 conv (4*growth) then BN-ReLU-3x3 conv (growth), concatenated to the input."""

    def __init__(self, in_planes: int, growth_rate: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        # New features first, as in kuangliu's code; the order does not change the model class.
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv to compress channels, then 2x2 average pooling to halve resolution."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """CIFAR DenseNet-BC: stem conv, four dense blocks joined by compressing transitions."""

    def __init__(
        self,
        nblocks: list[int],
        growth_rate: int = 32,
        reduction: float = 0.5,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        num_planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, num_planes, kernel_size=3, padding=1, bias=False)

        stages: list[nn.Module] = []
        for i, n in enumerate(nblocks):
            stages.append(self._make_dense(num_planes, growth_rate, n))
            num_planes += n * growth_rate
            if i < len(nblocks) - 1:  # no transition after the last block
                out_planes = math.floor(num_planes * reduction)
                stages.append(Transition(num_planes, out_planes))
                num_planes = out_planes
        self.features = nn.Sequential(*stages)

        # Pre-activation layers end un-normalized, so one last BN-ReLU before pooling.
        self.bn = nn.BatchNorm2d(num_planes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(num_planes, num_classes)

    @staticmethod
    def _make_dense(in_planes: int, growth_rate: int, nblock: int) -> nn.Sequential:
        return nn.Sequential(*(DenseBottleneck(in_planes + i * growth_rate, growth_rate) for i in range(nblock)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(self.conv1(x))
        out = self.avgpool(F.relu(self.bn(out)))
        return self.linear(torch.flatten(out, 1))


@register_model("densenet121")
def densenet121(num_classes: int = 10) -> DenseNet:
    """DenseNet-121 for CIFAR (growth 32, blocks 6/12/24/16), 7.0M parameters at 10 classes."""
    return DenseNet([6, 12, 24, 16], growth_rate=32, reduction=0.5, num_classes=num_classes)
