"""ResNet-18/34/50 for CIFAR, as in kuangliu/pytorch-cifar.

These differ from the ImageNet ResNets (He et al. 2015) only in the stem: a 3x3 stride-1 conv
and no max-pool, so 32x32 inputs keep enough resolution for the four stages (32, 16, 8, 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xgrad.models import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Shortcut for a block's input: identity when shapes match, else a 1x1 conv + BN (option B)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34; with a parameter-free shortcut, ResNet-20/56).

    ``shortcut`` replaces the default (identity, or 1x1 conv + BN where the shape changes).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        # No conv bias: the following BN's shift makes it redundant.
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut if shortcut is not None else _projection(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection (ResNet-50 and up)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # Stride on the 3x3 conv, as in kuangliu's (and torchvision's "v1.5") variant.
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _projection(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem, four stages of 64/128/256/512 planes, global average pool, linear."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        # Adaptive rather than kuangliu's fixed 4x4 pool, so other input sizes still work.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, num_blocks: int, stride: int
    ) -> nn.Sequential:
        # Only the first block of a stage downsamples.
        blocks = []
        for s in [stride] + [1] * (num_blocks - 1):
            blocks.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.avgpool(out), 1))


def _resnet(block: type[BasicBlock] | type[Bottleneck], layers: list[int], num_classes: int) -> ResNet:
    """Family factory: a CIFAR ResNet with ``layers[i]`` blocks in stage ``i``."""
    return ResNet(block, layers, num_classes)


@register_model("resnet18")
def resnet18(num_classes: int = 10) -> ResNet:
    """ResNet-18 for CIFAR (11.2M parameters at 10 classes)."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes)


@register_model("resnet34")
def resnet34(num_classes: int = 10) -> ResNet:
    """ResNet-34 for CIFAR (21.3M parameters at 10 classes)."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes)


@register_model("resnet50")
def resnet50(num_classes: int = 10) -> ResNet:
    """ResNet-50 for CIFAR (23.5M parameters at 10 classes)."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes)
