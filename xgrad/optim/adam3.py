"""AdaM3 (Wang et al., arXiv 2106.11514): Adam with the second moment of the momentum."""

from __future__ import annotations

from ._adaptive import AdaptiveMomentOptimizer

__all__ = ["AdaM3"]


class AdaM3(AdaptiveMomentOptimizer):
    r"""AdaM3: Adam whose second moment is the EMA of the squared momentum, with no eps outside the root.

    For each parameter, with gradient ``g`` (plus ``weight_decay * theta`` when the decay is L2)::

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * m**2 + eps        # the momentum, not the gradient, is squared
        theta -= lr * m_hat / sqrt(v_hat)               # m_hat = m / (1 - beta1**t), v_hat = v / (1 - beta2**t)

    ``decoupled_weight_decay=True`` applies ``theta *= 1 - lr * weight_decay`` before the update instead of L2
    decay; ``amsgrad=True`` divides by the running maximum of ``v``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (>= 0).
        betas: (beta1, beta2), each in [0, 1).
        eps: added inside the root, keeping it away from zero (> 0).
        weight_decay: decay coefficient (>= 0).
        decoupled_weight_decay: decoupled (AdamW-style) instead of L2 decay.
        amsgrad: use the running maximum of the second moment.
        foreach: multi-tensor kernels (default) or a plain per-parameter loop (False).
    """

    residual = "momentum"
    eps_outside_sqrt = False
