"""AdaBelief (Zhuang et al., NeurIPS 2020), without rectification."""

from __future__ import annotations

from ._adaptive import AdaptiveMomentOptimizer

__all__ = ["AdaBelief"]


class AdaBelief(AdaptiveMomentOptimizer):
    r"""AdaBelief: Adam whose second moment is the EMA of the squared "belief" residual ``g - m``.

    For each parameter, with gradient ``g`` (plus ``weight_decay * theta`` when the decay is L2)::

        m = beta1 * m + (1 - beta1) * g
        s = beta2 * s + (1 - beta2) * (g - m)**2 + eps
        theta -= lr * m_hat / (sqrt(s_hat) + eps)     # m_hat = m / (1 - beta1**t), s_hat = s / (1 - beta2**t)

    With ``decoupled_weight_decay=True`` the decay is applied as ``theta *= 1 - lr * weight_decay`` before the
    update (AdamW-style) instead of being added to the gradient. With ``amsgrad=True`` the running maximum of
    ``s`` replaces ``s`` in the denominator. This matches the official ``adabelief-pytorch`` package with
    ``rectify=False, fixed_decay=False`` step for step.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (>= 0).
        betas: (beta1, beta2), each in [0, 1).
        eps: added inside and outside the square root (> 0).
        weight_decay: decay coefficient (>= 0).
        decoupled_weight_decay: decoupled (AdamW-style) instead of L2 decay.
        amsgrad: use the running maximum of the second moment.
        foreach: multi-tensor kernels (default) or a plain per-parameter loop (False).
    """

    residual = "belief"
    eps_outside_sqrt = True
