"""CIFAR model zoo and a name-based model registry.

Models are looked up by name so that a Hydra config group entry (``conf/model/<name>.yaml``,
holding just ``name: <name>``) is enough to pick one::

    model = create_model(cfg.model.name, num_classes=10)

Other modules (e.g. a language-model module) add their own entries with :func:`register_model`;
they only have to be imported before :func:`create_model` is called, for instance by appending
them to the import list at the bottom of this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from xgrad.hparams import Param

__all__ = ["MODELS", "ModelSpec", "count_parameters", "create_model", "register_model"]

_F = TypeVar("_F", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its factory, the task it serves, and the hyperparameters a config may set.

    ``hyperparameters`` declares every ``model.<key>`` the factory takes (besides ``num_classes``) with its type
    and range (:mod:`xgrad.hparams`); the config schema (xgrad/schema.py) refuses other keys and bad values
    before a run starts. ``rules`` check several keys together: ``rule(hp) -> error text or None``.
    """

    factory: Callable[..., nn.Module]
    task: str = "classification"
    hyperparameters: dict[str, Param] = field(default_factory=dict)
    rules: tuple[Callable[[dict[str, Any]], str | None], ...] = ()


MODELS: dict[str, ModelSpec] = {}
"""Registered models by name; each factory takes ``num_classes`` (and its declared hyperparameters)."""


def register_model(
    name: str,
    task: str = "classification",
    hyperparameters: dict[str, Param] | None = None,
    rules: tuple[Callable[[dict[str, Any]], str | None], ...] = (),
) -> Callable[[_F], _F]:
    """Return a decorator that adds a model factory to :data:`MODELS` under ``name``.

    ``task`` is the ``dataset.task`` it serves (``classification`` or ``language_model``); ``hyperparameters``
    and ``rules`` as in :class:`ModelSpec`. The factory is returned unchanged, so it stays directly callable.
    Registering a name twice raises ``ValueError``: silently replacing an entry would make configs resolve to a
    different model depending on import order.
    """

    def decorator(factory: _F) -> _F:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = ModelSpec(factory, task, dict(hyperparameters or {}), rules)
        return factory

    return decorator


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with ``num_classes`` outputs.

    Extra keyword arguments go to the factory. Raises ``ValueError`` for an unknown name,
    listing the known ones.
    """
    try:
        spec = MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None
    return spec.factory(num_classes=num_classes, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable (``requires_grad``) parameter elements in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Imported last, for their side effect of registering entries: they need ``register_model``,
# which must therefore already exist when they are imported.
from xgrad.models import awd_lstm, densenet, lenet, lstm, resnet, resnet_cifar, vgg  # noqa: E402, F401
