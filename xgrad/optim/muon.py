"""Muon for the hidden weight matrices and AdamW for everything else, as one optimizer (Keller Jordan's usage).

Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/) orthogonalises the momentum of each hidden
weight matrix with a Newton-Schulz iteration; its documentation and ``torch.optim.Muon``'s say that embeddings,
the classifier head and vectors (biases, norm gains) belong to AdamW. One optimizer object keeps the training
loop, the learning-rate schedule, checkpoints and weight prediction unchanged: its ``param_groups`` hold both
kinds (``use_muon`` tells which), all with an ``lr``.

The arithmetic is torch's own: the Muon update is ``torch.optim._muon.muon`` (the functional behind
``torch.optim.Muon``) and the rest is stepped by a ``torch.optim.AdamW`` sharing this optimizer's groups and
state. Convolution filters are viewed as ``(out_channels, in_channels * kh * kw)`` matrices, as the reference
implementation does (``torch.optim.Muon`` alone accepts only 2-D parameters).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS
from torch.optim._muon import muon as muon_update

__all__ = ["MuonWithAdamW", "muon_param_groups"]


def muon_param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Split ``model``'s parameters as the Muon README says: Muon for the hidden weight matrices and convolution
    filters, AdamW for the embeddings, the output layer (the last ``nn.Linear``), the first convolution (it sees
    the raw input) and every parameter with fewer than 2 dimensions. Tied weights count once."""
    modules = list(model.modules())
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    convs = [m for m in modules if isinstance(m, nn.modules.conv._ConvNd)]
    to_adamw = {id(p) for m in modules if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for p in m.parameters()}
    to_adamw |= {id(m.weight) for m in linears[-1:] + convs[:1]}
    hidden, rest = [], []
    for p in model.parameters():
        (hidden if p.ndim >= 2 and id(p) not in to_adamw else rest).append(p)
    groups = [{"params": hidden, "use_muon": True}, {"params": rest, "use_muon": False}]
    return [g for g in groups if g["params"]]


def _matrix(t: Tensor) -> Tensor:
    """``t`` as a 2-D ``(rows, rest)`` view (a copy only if ``t`` is not contiguous, e.g. channels_last)."""
    return t if t.ndim == 2 else t.reshape(len(t), -1)


class MuonWithAdamW(Optimizer):
    """Muon on the groups with ``use_muon=True``, AdamW on the others.

    Args:
        params: parameter groups each with ``use_muon`` (e.g. :func:`muon_param_groups`), or plain tensors
            (then those with 2 or more dimensions go to Muon, as ``torch.optim.Muon``'s example does).
        lr, momentum, nesterov, ns_steps, weight_decay, adjust_lr_fn: Muon's (``torch.optim.Muon``'s meaning;
            the weight decay is decoupled, ``theta *= 1 - lr * weight_decay``).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: AdamW's, for the other groups.
        foreach: AdamW's multi-tensor kernels (Muon has none).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        adjust_lr_fn: str | None = None,
        adamw_lr: float = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-10,
        adamw_weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
    ) -> None:
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": [p for p in groups if p.ndim >= 2], "use_muon": True},
                      {"params": [p for p in groups if p.ndim < 2], "use_muon": False}]  # fmt: skip
            groups = [g for g in groups if g["params"]]
        for g in groups:
            if "use_muon" not in g:
                raise ValueError("MuonWithAdamW: every parameter group needs use_muon=True or False")
        muon_defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps,
                         "weight_decay": weight_decay, "adjust_lr_fn": adjust_lr_fn, "eps": EPS,
                         "ns_coefficients": (DEFAULT_A, DEFAULT_B, DEFAULT_C),
                         # tells weight prediction that the decay is decoupled (theta * (1 - lr * wd))
                         "decoupled_weight_decay": True}  # fmt: skip
        for g in groups:
            if g["use_muon"]:
                for key, value in muon_defaults.items():
                    g.setdefault(key, value)
        adamw_groups = [g for g in groups if not g["use_muon"]]
        # The AdamW fills its groups' defaults (the same dicts this optimizer then holds) and later steps them.
        self._adamw = None
        if adamw_groups:
            self._adamw = torch.optim.AdamW(adamw_groups, lr=adamw_lr, betas=adamw_betas, eps=adamw_eps,
                                            weight_decay=adamw_weight_decay, foreach=foreach)  # fmt: skip
        super().__init__(groups, {})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One Muon step on the Muon groups and one AdamW step on the others."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
        if self._adamw is not None:
            # Re-linked each step: load_state_dict and add_param_group replace this optimizer's groups and state.
            self._adamw.param_groups = [g for g in self.param_groups if not g["use_muon"]]
            self._adamw.state = self.state
            self._adamw.step()
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        params, matrices, grads, buffers = [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            params.append(p)
            matrices.append(_matrix(p))
            grads.append(_matrix(p.grad))
            buffers.append(_matrix(state["momentum_buffer"]))
        keys = ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn")
        muon_update(matrices, grads, buffers, has_complex=False, **{k: group[k] for k in keys})
        for p, m in zip(params, matrices):
            if m.data_ptr() != p.data_ptr():  # a non-contiguous parameter was updated in a copy
                p.copy_(m.view(p.shape))
