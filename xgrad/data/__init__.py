"""Data layer: image sets (CIFAR-10/100, generated demo images) and an on-device batch loader."""

from .cifar import DataError, ImageDataset, ImageSplit, load_cifar, split_validation
from .demo_images import make_demo_images
from .loader import DeviceImageLoader

__all__ = [
    "DataError",
    "DeviceImageLoader",
    "ImageDataset",
    "ImageSplit",
    "load_cifar",
    "make_demo_images",
    "split_validation",
]
