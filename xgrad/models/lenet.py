"""LeNet-5-style CNN for 32x32 images: a small model without batch norm (its outputs do not depend on the batch)."""

from __future__ import annotations

from torch import Tensor, nn

from xgrad.models import register_model

__all__ = ["LeNet", "lenet"]


class LeNet(nn.Module):
    """conv5-pool-conv5-pool-fc120-fc84-fc (LeCun et al. 1998, with ReLU and max-pooling, CIFAR-sized input)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of 3x32x32 images."""
        return self.classifier(self.features(x))


@register_model("lenet")
def lenet(num_classes: int = 10) -> LeNet:
    """LeNet-5 for CIFAR (62,006 parameters for 10 classes)."""
    return LeNet(num_classes)
