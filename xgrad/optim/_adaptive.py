"""The shared skeleton of AdaBelief and AdaM3: Adam with a different second moment.

Both keep Adam's first moment ``m`` and bias corrections and differ only in what they square into the second
moment and whether ``eps`` is also added outside the square root. One implementation serves both: a subclass
sets :attr:`residual` (what is squared) and :attr:`eps_outside_sqrt`.

The state keys are Adam's (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``), so tools that read
Adam's state (the weight predictor among them) read these optimizers' state the same way.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["AdaptiveMomentOptimizer", "validate_adam_hyperparameters"]


def validate_adam_hyperparameters(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """Raise ``ValueError`` naming the first hyperparameter outside its accepted range."""
    if not lr >= 0.0:
        raise ValueError(f"invalid lr={lr!r}: accepted lr >= 0")
    if len(betas) != 2:
        raise ValueError(f"invalid betas={betas!r}: accepted a pair (beta1, beta2), each in [0, 1)")
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"invalid betas[{i}]={beta!r}: accepted 0 <= beta < 1")
    if not eps > 0.0:
        raise ValueError(f"invalid eps={eps!r}: accepted eps > 0")
    if not weight_decay >= 0.0:
        raise ValueError(f"invalid weight_decay={weight_decay!r}: accepted weight_decay >= 0")


def _real(tensors: list[Tensor]) -> list[Tensor]:
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]


class AdaptiveMomentOptimizer(Optimizer):
    """Adam-style optimizer whose second moment is the EMA of ``residual(g, m)**2 + eps``.

    Subclasses choose the residual and whether eps appears outside the root; see AdaBelief and AdaM3.
    """

    #: ``"belief"`` squares ``g - m`` (AdaBelief); ``"momentum"`` squares ``m`` (AdaM3).
    residual: str
    #: Whether the update divides by ``sqrt(s_hat) + eps`` (True) or by ``sqrt(s_hat)`` (False).
    eps_outside_sqrt: bool

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        amsgrad: bool = False,
        foreach: bool | None = None,
    ) -> None:
        validate_adam_hyperparameters(lr, betas, eps, weight_decay)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            amsgrad=amsgrad,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, amsgrad: bool) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float64 if p.dtype == torch.float64 else torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            states = [self._init_state(p, group["amsgrad"]) for p in params]
            foreach = group["foreach"] is None or group["foreach"]
            if foreach:
                # Multi-tensor ops need one device and dtype per call.
                buckets: dict[tuple, list[int]] = defaultdict(list)
                for i, p in enumerate(params):
                    buckets[(p.device, p.dtype)].append(i)
                chunks = list(buckets.values())
            else:
                # One tensor at a time bounds the temporaries to one parameter's size.
                chunks = [[i] for i in range(len(params))]
            for idx in chunks:
                self._update([params[i] for i in idx], [states[i] for i in idx], group)
        return loss

    def _update(self, params_in: list[Tensor], states: list[dict], group: dict) -> None:
        """Apply one step to the parameters (same device and dtype) with the group's hyperparameters."""
        beta1, beta2 = (float(b) for b in group["betas"])  # tensors accepted, as by torch's Adam
        lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        # Complex tensors are updated as pairs of reals (|g|^2 per component), as torch's Adam does.
        params = _real(params_in)
        grads = _real([p.grad for p in params_in])
        exp_avgs = _real([s["exp_avg"] for s in states])
        exp_avg_sqs = _real([s["exp_avg_sq"] for s in states])
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)

        if wd != 0:
            if group["decoupled_weight_decay"]:
                torch._foreach_mul_(params, 1 - lr * wd)
            else:
                grads = torch._foreach_add(grads, params, alpha=wd)

        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        if self.residual == "belief":
            residuals = torch._foreach_sub(grads, exp_avgs)
        else:
            residuals = exp_avgs
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, residuals, residuals, value=1 - beta2)
        torch._foreach_add_(exp_avg_sqs, eps)
        second = exp_avg_sqs
        if group["amsgrad"]:
            second = _real([s["max_exp_avg_sq"] for s in states])
            torch._foreach_maximum_(second, exp_avg_sqs)

        ts = [float(t) for t in steps]
        bias_correction2_sqrt = [math.sqrt(1 - beta2**t) for t in ts]
        step_sizes = [-lr / (1 - beta1**t) for t in ts]
        denom = torch._foreach_sqrt(second)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        if self.eps_outside_sqrt:
            torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)
