"""Names and number formats shared by the tables and figures, so both say the same thing the same way."""

from __future__ import annotations

import math
import re

from xgrad.optim import factory as optimizer_registry

__all__ = [
    "OPTIMIZER_ORDER",
    "default_prediction",
    "fmt_diff",
    "fmt_mean_std",
    "higher_is_better",
    "latex_escape",
    "metric_label",
    "optimizer_rank",
    "pretty_dataset",
    "pretty_model",
    "pretty_optimizer",
    "setting_title",
    "slug",
]

DATASETS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "ptb": "Penn Treebank", "demo_images": "demo images"}
MODELS = {
    "resnet18": "ResNet-18",
    "resnet20": "ResNet-20",
    "resnet34": "ResNet-34",
    "resnet50": "ResNet-50",
    "resnet56": "ResNet-56",
    "densenet121": "DenseNet-121",
    "vgg11": "VGG-11",
    "vgg16": "VGG-16",
    "lstm": "LSTM",
    "awd_lstm": "AWD-LSTM",
}
# Display names from the optimizer registry (each entry's label). Table rows and colours follow the registry's
# order (the README's), so every table and figure lists optimizers alike.
OPTIMIZERS = {name: spec.label for name, spec in optimizer_registry.OPTIMIZERS.items()}
OPTIMIZER_ORDER = list(OPTIMIZERS)


def default_prediction(name: str) -> str | None:
    """What ``predict_method=auto`` runs for the registered optimizer ``name`` ("rule" or "extrapolate"; None
    when it is not registered here or cannot predict)."""
    spec = optimizer_registry.OPTIMIZERS.get(name)
    return spec.prediction if spec is not None and spec.can_predict else None


def pretty_dataset(name: str) -> str:
    return DATASETS.get(name, name)


def pretty_model(name: str) -> str:
    return MODELS.get(name, name)


def pretty_optimizer(name: str) -> str:
    return OPTIMIZERS.get(name, name)


def optimizer_rank(name: str) -> tuple[int, str]:
    """Sort key: the known optimizers in README order, then the others alphabetically."""
    return (OPTIMIZER_ORDER.index(name) if name in OPTIMIZER_ORDER else len(OPTIMIZER_ORDER), name)


def higher_is_better(metric: str) -> bool:
    return metric == "acc"


def metric_label(metric: str, split: str = "test") -> str:
    """``test accuracy (%)`` or ``test perplexity``."""
    return f"{split} accuracy (%)" if metric == "acc" else f"{split} perplexity"


def setting_title(dataset: str, model: str, synthetic: bool, reduced_scale: bool) -> str:
    """``CIFAR-10 / ResNet-34``, plus what makes the numbers not the paper's setting."""
    notes = [n for n, on in (("synthetic data", synthetic), ("reduced scale", reduced_scale)) if on]
    title = f"{pretty_dataset(dataset)} / {pretty_model(model)}"
    return title + (f" ({', '.join(notes)})" if notes else "")


def slug(*parts: str) -> str:
    """A file-name-safe join of ``parts`` (empty parts dropped)."""
    return "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", p).strip("-") for p in parts if p)


def fmt_mean_std(mean: float, std: float, digits: int = 2) -> str:
    """``93.12 ± 0.21``; the mean alone when there is no spread to show (one seed); ``—`` when nothing."""
    if mean is None or not math.isfinite(mean):
        return "—"
    if std is None or not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_diff(value: float, digits: int = 2) -> str:
    """A signed difference, ``+0.42`` / ``-1.30``; ``—`` when it cannot be computed."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:+.{digits}f}"


_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "−": r"$-$",
    "—": "---",
    "×": r"$\times$",
    "<": r"$<$",
    ">": r"$>$",
    "`": "",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters and turn the few symbols the report uses into math."""
    return "".join(_LATEX.get(char, char) for char in str(text))
