"""VGG-11/16 with batch norm for CIFAR, as in kuangliu/pytorch-cifar (Simonyan & Zisserman 2015).

Five max-pools take 32x32 inputs down to 1x1x512, so a single linear layer replaces the
ImageNet VGG's three-layer 4096-wide classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from xgrad.models import register_model

__all__ = ["CFGS", "VGG", "vgg11", "vgg16"]

CFGS: dict[str, list[int | str]] = {
    # Output channels of each conv3x3-BN-ReLU; "M" is a 2x2 max-pool.
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}
"""Layer tables per VGG variant (configurations A and D of the paper)."""


class VGG(nn.Module):
    """VGG feature stack built from a cfg list, followed by one linear classifier."""

    def __init__(self, cfg: list[int | str], num_classes: int = 10) -> None:
        super().__init__()
        self.features = self._make_layers(cfg)
        self.linear = nn.Linear(512, num_classes)

    @staticmethod
    def _make_layers(cfg: list[int | str]) -> nn.Sequential:
        layers: list[nn.Module] = []
        in_channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(v, int)
                # Convs keep their bias, as in kuangliu's code (and torchvision's vgg*_bn);
                # it is redundant before BN but is part of the published parameter counts.
                layers += [
                    nn.Conv2d(in_channels, v, kernel_size=3, padding=1),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                in_channels = v
        # kuangliu's AvgPool2d(1, 1) is a no-op on the 1x1 map; kept for layer-for-layer parity.
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.features(x), 1))


def _vgg(variant: str, num_classes: int) -> VGG:
    """Family factory: the VGG variant named by a key of :data:`CFGS`."""
    return VGG(CFGS[variant], num_classes)


@register_model("vgg11")
def vgg11(num_classes: int = 10) -> VGG:
    """VGG-11 with batch norm for CIFAR, 9.2M parameters at 10 classes."""
    return _vgg("vgg11", num_classes)


@register_model("vgg16")
def vgg16(num_classes: int = 10) -> VGG:
    """VGG-16 with batch norm for CIFAR, 14.7M parameters at 10 classes."""
    return _vgg("vgg16", num_classes)
