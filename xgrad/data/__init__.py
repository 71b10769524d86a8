"""Data layer: image sets (CIFAR-10/100, generated demo images) and an on-device batch loader."""

from .cifar import DataError, ImageDataset, ImageSplit, load_cifar, split_validation
from .demo_images import make_demo_images
from .loader import DeviceImageLoader
from .ptb import TextCorpus, batchify, bptt_windows, build_vocabulary, load_ptb, make_demo_text

__all__ = [
    "DataError",
    "DeviceImageLoader",
    "ImageDataset",
    "ImageSplit",
    "TextCorpus",
    "batchify",
    "bptt_windows",
    "build_vocabulary",
    "load_cifar",
    "load_ptb",
    "make_demo_images",
    "make_demo_text",
    "split_validation",
]
