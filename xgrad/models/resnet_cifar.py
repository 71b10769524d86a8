"""ResNet-20/56 for CIFAR from He et al. 2016, "Deep Residual Learning for Image Recognition", §4.2.

The network has 6n+2 layers: a 3x3 conv, three stages of n basic blocks with 16/32/64 channels
on 32/16/8 feature maps, global average pooling and a linear layer. Shortcuts are option A
(parameter-free): identity, or stride-2 subsampling plus zero-padded channels where the shape
changes. This matches akamaster/pytorch_resnet_cifar10, the usual PyTorch reference
(ResNet-20: 0.27M parameters, ResNet-56: 0.85M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xgrad.models import register_model
from xgrad.models.resnet import BasicBlock

__all__ = ["CifarResNet", "resnet20", "resnet56"]


class _ZeroPadShortcut(nn.Module):
    """Option A shortcut: subsample by 2 and zero-pad the new channels evenly on both sides."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.pad = extra_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


def _option_a_block(in_planes: int, planes: int, stride: int) -> BasicBlock:
    """A basic block whose shortcut is parameter-free (option A), which keeps the paper's parameter counts."""
    shortcut = nn.Identity() if stride == 1 and in_planes == planes else _ZeroPadShortcut(planes - in_planes)
    return BasicBlock(in_planes, planes, stride, shortcut=shortcut)


class CifarResNet(nn.Module):
    """He et al. CIFAR ResNet with ``n`` blocks per stage (depth 6n+2)."""

    def __init__(self, n: int, num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        # akamaster's init; the paper cites He et al. 2015 (Kaiming) init. BN keeps torch defaults.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (num_blocks - 1):
            blocks.append(_option_a_block(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(self.avgpool(out), 1))


def _cifar_resnet(depth: int, num_classes: int) -> CifarResNet:
    """Family factory: the He et al. CIFAR ResNet of the given depth (must be 6n+2)."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
    return CifarResNet((depth - 2) // 6, num_classes)


@register_model("resnet20")
def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (n=3) for CIFAR, 0.27M parameters at 10 classes."""
    return _cifar_resnet(20, num_classes)


@register_model("resnet56")
def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (n=9) for CIFAR, 0.85M parameters at 10 classes."""
    return _cifar_resnet(56, num_classes)
