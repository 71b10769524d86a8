"""Tests for the CIFAR model zoo in :mod:`xgrad.models`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xgrad.models import MODELS, count_parameters, create_model, register_model

# Trainable parameters at num_classes=10, checked against the published/reference figures.
EXPECTED_PARAMS = {
    # He et al. 2016 report 0.27M / 0.85M. With the paper's option A (parameter-free) shortcuts,
    # as in akamaster/pytorch_resnet_cifar10, the exact counts are 269,722 / 853,018. The often
    # quoted 272,474 / 855,770 are option B (1x1 projection + BN at the two downsampling blocks:
    # 16*32 + 2*32 + 32*64 + 2*64 = 2,752 more parameters), which is not the paper's CIFAR setup.
    "resnet20": 269_722,
    "resnet56": 853_018,
    # kuangliu/pytorch-cifar variants.
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "densenet121": 6_956_298,
    "vgg11": 9_231_114,
    "vgg16": 14_728_266,
}
CIFAR_MODELS = sorted(EXPECTED_PARAMS)


def _batch(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_registry_has_every_cifar_model() -> None:
    # A subset check: other modules may register more models (e.g. language models).
    assert set(CIFAR_MODELS) <= set(MODELS)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_parameter_count_and_output_shape(name: str) -> None:
    model = create_model(name, num_classes=10).eval()
    assert count_parameters(model) == EXPECTED_PARAMS[name]
    with torch.no_grad():
        assert model(_batch()).shape == (2, 10)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_num_classes_100(name: str) -> None:
    model = create_model(name, num_classes=100).eval()
    # Only the classifier grows: 90 more rows of (in_features weights + 1 bias).
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert count_parameters(model) == EXPECTED_PARAMS[name] + 90 * (head.in_features + 1)
    with torch.no_grad():
        assert model(_batch()).shape == (2, 100)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_backward_reaches_every_parameter(name: str) -> None:
    model = create_model(name).train()
    loss = F.cross_entropy(model(_batch()), torch.tensor([0, 1]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_channels_last_matches_contiguous(name: str) -> None:
    model = create_model(name).eval()
    x = _batch()
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    assert out.shape == (2, 10)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ValueError, match="no-such-net") as info:
        create_model("no-such-net")
    assert ", ".join(sorted(MODELS)) in str(info.value)


def test_register_model_adds_entry_and_rejects_duplicates() -> None:
    @register_model("_test_tiny")
    def tiny(num_classes: int = 10, width: int = 4) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, width), nn.Linear(width, num_classes))

    try:
        model = create_model("_test_tiny", num_classes=3, width=5)
        assert model(_batch()).shape == (2, 3)
        assert count_parameters(model) == (3 * 32 * 32 + 1) * 5 + (5 + 1) * 3
        with pytest.raises(ValueError, match="already registered"):
            register_model("_test_tiny")(tiny)
    finally:
        del MODELS["_test_tiny"]


def test_count_parameters_skips_frozen() -> None:
    model = nn.Linear(4, 2)
    model.bias.requires_grad_(False)
    assert count_parameters(model) == 8
