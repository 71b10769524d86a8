"""Weight prediction (XGrad): run forward and backward at the weights the optimizer is about to reach.

Before a mini-batch the parameters ``theta`` are replaced by the predicted weights
``theta_hat = theta - s * lr * Delta``, where ``Delta`` is the update direction the optimizer's own rule gives
from its current state and ``s`` is the prediction horizon; after backward, ``theta`` comes back and the
optimizer steps with the gradients taken at ``theta_hat``.

Two ways to get ``theta_hat`` (``method=``). ``"rule"``: a rule registered for the optimizer's class computes
``Delta`` from the optimizer's state. ``"extrapolate"``, for any optimizer: the rules' ``Delta`` is exactly the
state that made the last step, so ``theta_hat`` is the last update repeated, scaled by the change of the learning
rate: ``theta_t + s * (lr_next / lr_last) * (theta_t - theta_{t-1})`` (a decoupled weight decay taken out of the
last update and, with ``include_weight_decay``, put back at ``lr_next``). A step pre-hook saves ``theta_{t-1}``
into the spare buffer and ``predict()`` combines it with ``theta_t`` in place. ``"auto"`` (the default) uses the
rule where there is one.

How it is made cheap: each parameter gets one spare buffer (allocated once). ``predict()`` writes
``theta_hat`` into the spares with multi-tensor (``torch._foreach_*``) kernels, grouped by device and dtype,
and then swaps storage (``p.data = spare``) so the parameters *are* the predicted weights; ``restore()`` swaps
the original storage back. No copy of the weights in or out, restore is bit-exact by construction, and the
extra memory is one copy of the parameters. Parameters that share one storage (cuDNN's flattened RNN weights, or
any model that packs its parameters into one tensor) get spares that share one spare storage at the same offsets
and strides, so the predicted weights are packed exactly like the weights (a predicted ``nn.LSTM`` stays one
chunk in cuDNN's order); the other parameters' spares are packed one after another, 64-byte aligned.

A prediction rule for another optimizer is one function registered with :func:`register_rule`.
"""

from __future__ import annotations

import itertools
import math
import types
import warnings
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import TracebackType
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .optim import AdaBelief, AdaM3

__all__ = ["PREDICTION_METHODS", "PredictionBatch", "WeightPredictor", "register_rule", "supported_optimizers"]

#: The accepted values of ``WeightPredictor(method=...)``.
PREDICTION_METHODS = ("auto", "rule", "extrapolate")


@dataclass
class PredictionBatch:
    """What a rule gets: parameters of one param group, on one device and dtype, that have optimizer state.

    A rule writes ``decay * params[i] - steps * lr * Delta_i`` into ``out[i]`` (never into ``params`` or the
    state), where ``decay`` is ``1 - steps * lr * weight_decay`` for a decoupled decay when the predictor
    includes it, else 1. The ``out`` tensors are views into the one 1-D tensor ``flat`` (which also holds
    alignment gaps): an elementwise in-place op on ``flat`` updates every ``out[i]`` in a single kernel, so
    steps that involve no other tensor cost one call instead of one per parameter. ``flat`` is None when
    ``out`` covers only part of it. Complex parameters arrive as real views (``torch.view_as_real``) of the
    parameters, their state tensors and ``out``, as torch's optimizers treat them.
    """

    group: dict[str, Any]
    params: list[Tensor]
    states: list[dict[str, Any]]
    out: list[Tensor]
    flat: Tensor | None
    steps: float
    include_weight_decay: bool
    #: Whether the predictor asks for ``torch.compile``-fused kernels (a rule may ignore it).
    compile: bool = False
    #: Per-batch storage that lives as long as the predictor (e.g. a compiled kernel and its scalar tensors).
    cache: dict[str, Any] = field(default_factory=dict)
    #: The optimizer the group belongs to.
    optimizer: Optimizer | None = None

    @property
    def lr(self) -> float:
        """The group's current learning rate as a Python float."""
        return float(self.group["lr"])


RuleFn = Callable[[PredictionBatch], None]


@dataclass(frozen=True)
class _Rule:
    fn: RuleFn
    state_key: str
    check_group: Callable[[dict[str, Any]], None] | None


_RULES: dict[type, _Rule] = {}


def register_rule(
    *optimizer_classes: type[Optimizer],
    state_key: str,
    check_group: Callable[[dict[str, Any]], None] | None = None,
) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn(batch: PredictionBatch)`` as the prediction rule of ``optimizer_classes`` (and subclasses).

    ``state_key`` names the state entry a parameter must have to be predicted (parameters without it, e.g.
    before their first step, keep their weights). ``check_group(group)`` raises ``ValueError`` for settings the
    rule cannot predict from; it runs when the predictor is built and before each prediction.
    """

    def decorate(fn: RuleFn) -> RuleFn:
        for cls in optimizer_classes:
            _RULES[cls] = _Rule(fn, state_key, check_group)
        return fn

    return decorate


def supported_optimizers() -> list[str]:
    """Names of the optimizer classes that have a prediction rule."""
    return sorted({f"{cls.__module__}.{cls.__qualname__}" for cls in _RULES})


def _registered_rule(optimizer: Optimizer) -> _Rule | None:
    return next((_RULES[cls] for cls in type(optimizer).__mro__ if cls in _RULES), None)


def _find_rule(optimizer: Optimizer) -> _Rule:
    rule = _registered_rule(optimizer)
    if rule is None:
        raise TypeError(
            f"no weight-prediction rule for {type(optimizer).__name__}; supported optimizers: "
            f"{', '.join(supported_optimizers())} (add one with xgrad.predict.register_rule, or predict any "
            "optimizer with method='extrapolate')"
        )
    return rule


def _resolve_method(optimizer: Optimizer, method: str) -> str:
    """``"rule"`` or ``"extrapolate"``: ``"auto"`` is the rule where one is registered, else extrapolation."""
    if method not in PREDICTION_METHODS:
        raise ValueError(
            f"invalid method={method!r}: accepted 'auto' (the optimizer's rule if registered, else extrapolation), "
            "'rule' (the registered rule) or 'extrapolate' (repeat the last update, any optimizer)"
        )
    if method == "auto":
        return "rule" if _registered_rule(optimizer) is not None else "extrapolate"
    return method


# --------------------------------------------------------------------------------------------- rules


def _check_sgd_group(group: dict[str, Any]) -> None:
    if float(group["momentum"]) == 0.0:
        raise ValueError(
            "SGD with momentum=0 has no update direction for its rule to predict from: use momentum in (0, 1), "
            "method='extrapolate' (repeat the last gradient step) or steps=0"
        )


@register_rule(torch.optim.SGD, state_key="momentum_buffer", check_group=_check_sgd_group)
def sgd_momentum_rule(batch: PredictionBatch) -> None:
    """SGD with momentum: ``Delta = b``, the momentum buffer.

    With L2 weight decay the decay is already inside ``b``. With ``nesterov=True`` the real step is
    ``g + momentum * b``; as the next gradient is unknown, ``b`` is used as its approximation.
    """
    buffers = [s["momentum_buffer"] for s in batch.states]
    torch._foreach_copy_(batch.out, batch.params)
    torch._foreach_add_(batch.out, buffers, alpha=-batch.steps * batch.lr)


def _step_counts(states: Sequence[dict[str, Any]]) -> list[float]:
    steps = [s["step"] for s in states]
    if any(isinstance(t, Tensor) and t.device.type != "cpu" for t in steps):
        # Step counts on the GPU (fused or capturable optimizers): one transfer instead of a sync per tensor.
        return torch.stack([t.reshape(()).to(torch.float64) for t in steps]).tolist()
    return [float(t) for t in steps]


def _foreach_sqrt_(tensors: list[Tensor]) -> None:
    """In-place square roots; on CPU as ``1 / rsqrt(x)`` (within 2 ulp of ``sqrt``).

    Why: ATen's vectorised CPU ``sqrt`` is compute-bound and several times slower on exact zeros (measured
    with AVX-512: 4.65M floats, 0.9 ms normal, 4.1 ms all zeros, 10.4 ms half zeros), and an Adam(W) second
    moment is all zeros for embedding rows that never got a gradient. ``rsqrt`` then ``reciprocal`` costs
    0.9 ms whatever the values (``1 / inf = 0`` keeps zeros exact). Other devices keep the single pass.
    """
    if tensors[0].device.type == "cpu":
        torch._foreach_rsqrt_(tensors)
        torch._foreach_reciprocal_(tensors)
    else:
        torch._foreach_sqrt_(tensors)


def _keep_unstepped(rule: RuleFn, batch: PredictionBatch, counts: list[float]) -> None:
    """Parameters whose state has no step yet keep their weights; the others are predicted by ``rule``.

    This happens after a skipped first step: fused Adam under ``GradScaler`` takes the step count back.
    """
    fresh = [i for i, t in enumerate(counts) if t == 0]
    torch._foreach_copy_([batch.out[i] for i in fresh], [batch.params[i] for i in fresh])
    rest = [i for i, t in enumerate(counts) if t != 0]
    if rest:
        subset = {name: [getattr(batch, name)[i] for i in rest] for name in ("params", "states", "out")}
        rule(replace(batch, **subset, flat=None, compile=False))


def _adaptive_rule(eps_outside_sqrt: bool) -> RuleFn:
    def rule(batch: PredictionBatch) -> None:
        counts = _step_counts(batch.states)
        if 0 in counts:
            _keep_unstepped(rule, batch, counts)
            return
        group = batch.group
        beta1, beta2 = (float(b) for b in group["betas"])
        eps, lr, s = float(group["eps"]), batch.lr, batch.steps
        exp_avgs = [st["exp_avg"] for st in batch.states]
        if group.get("amsgrad", False):  # amsgrad switched on mid-run: no maximum until the next step
            seconds = [st.get("max_exp_avg_sq", st["exp_avg_sq"]) for st in batch.states]
        else:
            seconds = [st["exp_avg_sq"] for st in batch.states]

        decay = 1.0
        wd = float(group.get("weight_decay", 0.0))
        if batch.include_weight_decay and _decoupled(batch) and wd != 0.0:
            decay = 1.0 - s * lr * wd
        if batch.out[0].dtype == torch.float16:
            _predict_in_step_order(batch, exp_avgs, seconds, counts, eps if eps_outside_sqrt else 0.0, decay)
            return

        # m_hat / (sqrt(v_hat) + eps) = sqrt(bc2) / bc1 * m / (sqrt(v) + eps * sqrt(bc2)), with bc = 1 - beta^t:
        # the bias corrections become scalars, so only copying v in and combining with m and theta touch
        # other tensors; everything else runs on the flat buffer in one kernel.
        scales, epsilons = [], []
        for t in counts:
            bc2_sqrt = math.sqrt(1.0 - beta2**t)
            scales.append(-s * lr * bc2_sqrt / (1.0 - beta1**t))
            epsilons.append(eps * bc2_sqrt)

        uniform = all(x == scales[0] for x in scales)
        if batch.compile and uniform and _run_fused(batch, eps_outside_sqrt, exp_avgs, seconds,
                                                    scales[0], epsilons[0], decay):  # fmt: skip
            return
        out, flat = batch.out, batch.flat
        torch._foreach_copy_(out, seconds)
        if uniform and flat is not None:  # one kernel per step on the whole flat buffer
            if eps_outside_sqrt:
                _foreach_sqrt_([flat])
                flat.add_(epsilons[0])
                torch.div(torch.tensor(scales[0], dtype=torch.float64), flat, out=flat)
            else:
                flat.rsqrt_().mul_(scales[0])
        else:  # parameters at different step counts (some skipped steps), or a subset: per-tensor scalars
            _foreach_sqrt_(out)
            if eps_outside_sqrt:
                torch._foreach_add_(out, epsilons)
            torch._foreach_reciprocal_(out)
            torch._foreach_mul_(out, scales)
        torch._foreach_mul_(out, exp_avgs)
        torch._foreach_add_(out, batch.params, alpha=decay)

    return rule


def _predict_in_step_order(
    batch: PredictionBatch, exp_avgs: list[Tensor], seconds: list[Tensor], counts: list[float], eps: float, decay: float
) -> None:
    """float16: the optimizer's own order, ``theta + (-s lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)``.

    Folding the bias corrections into eps and a reciprocal (the fast path) can underflow eps to zero or overflow
    the reciprocal in half precision; ``addcdiv`` computes its quotient in float32. This path allocates
    temporaries, as the optimizer's step does; float16 parameters (not autocast) are rare.
    """
    beta1, beta2 = (float(b) for b in batch.group["betas"])
    denominators = torch._foreach_sqrt(seconds)
    torch._foreach_div_(denominators, [math.sqrt(1.0 - beta2**t) for t in counts])
    if eps:
        torch._foreach_add_(denominators, eps)
    torch._foreach_copy_(batch.out, batch.params)
    if decay != 1.0:
        torch._foreach_mul_(batch.out, decay)
    step_sizes = [-batch.steps * batch.lr / (1.0 - beta1**t) for t in counts]
    torch._foreach_addcdiv_(batch.out, exp_avgs, denominators, step_sizes)


def _decoupled(batch: PredictionBatch) -> bool:
    """Whether the group's weight decay is decoupled (AdamW-style) rather than L2 inside the gradient."""
    return _is_decoupled(batch.optimizer, batch.group)


def _is_decoupled(optimizer: Optimizer | None, group: dict[str, Any]) -> bool:
    default = isinstance(optimizer, torch.optim.AdamW)  # torch versions whose AdamW groups lack the key
    return bool(group.get("decoupled_weight_decay", default))


def _decoupled_weight_decay(optimizer: Optimizer, group: dict[str, Any]) -> float:
    """The group's decoupled weight decay coefficient, 0 where the group declares none (or an L2 decay)."""
    return float(group.get("weight_decay", 0.0)) if _is_decoupled(optimizer, group) else 0.0


def _adam_kernel(params, exp_avgs, seconds, outs, scale, eps, decay):
    for p, m, v, o in zip(params, exp_avgs, seconds, outs):
        o.copy_(decay * p + scale * m / (v.sqrt() + eps))


def _adam3_kernel(params, exp_avgs, seconds, outs, scale, eps, decay):
    for p, m, v, o in zip(params, exp_avgs, seconds, outs):
        o.copy_(decay * p + scale * m * v.rsqrt())


def _run_fused(batch: PredictionBatch, eps_outside_sqrt: bool, exp_avgs, seconds, scale, eps, decay) -> bool:
    """Write the prediction with one ``torch.compile``-fused kernel; False (use eager) if it cannot compile.

    The fused kernel reads theta, m and v once and writes theta_hat once (4 tensor-sized transfers against the
    eager path's 14). Scalars travel as 0-dim tensors so a new lr or step count does not recompile, and each
    batch gets its own copy of the function so several batches do not share one recompile budget.
    """
    cache = batch.cache
    if cache.get("fused_failed"):
        return False
    if "kernel" not in cache:
        fn = _adam_kernel if eps_outside_sqrt else _adam3_kernel
        copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__)
        cache["kernel"] = torch.compile(copy, fullgraph=True, dynamic=False)
        dtype = torch.float64 if batch.out[0].dtype == torch.float64 else torch.float32
        with torch.inference_mode(False):
            cache["scalars"] = [torch.zeros((), dtype=dtype, device=batch.out[0].device) for _ in range(3)]
    scalars = cache["scalars"]
    for tensor, value in zip(scalars, (scale, eps, decay)):
        tensor.fill_(value)
    try:
        cache["kernel"](batch.params, exp_avgs, seconds, batch.out, *scalars)
    except Exception as e:  # a missing compiler or an unsupported setting: fall back to the eager kernels
        warnings.warn(f"compiled weight prediction unavailable, using eager kernels: {e}", stacklevel=3)
        cache["fused_failed"] = True
        return False
    return True


adam_rule = register_rule(torch.optim.Adam, torch.optim.AdamW, AdaBelief, state_key="exp_avg")(
    _adaptive_rule(eps_outside_sqrt=True)
)
adam_rule.__doc__ = """Adam, AdamW, AdaBelief: ``Delta = m_hat / (sqrt(v_hat) + eps)``.

``v`` is the second moment (AdaBelief's ``s``), or its running maximum with amsgrad. A decoupled weight decay
(AdamW, or ``decoupled_weight_decay=True``) is left out unless the predictor includes it."""

adam3_rule = register_rule(AdaM3, state_key="exp_avg")(_adaptive_rule(eps_outside_sqrt=False))
adam3_rule.__doc__ = """AdaM3: ``Delta = m_hat / sqrt(v_hat)`` with ``v`` the EMA of ``m**2`` (eps inside)."""


# --------------------------------------------------------------------------------------------- extrapolation


@dataclass
class _LastStep:
    """What the optimizer's last step was for one param group, recorded by the step pre-hook before it ran."""

    lr: float
    #: The decoupled weight decay the step applied (``theta *= 1 - lr * weight_decay``); 0 if none.
    weight_decay: float
    #: Per parameter of the group: whether the step could change it (optimizers skip parameters without a grad).
    moved: list[bool]
    #: Set by GradScaler for a fused optimizer, which then skips the step on the device when it is nonzero.
    found_inf: Tensor | None = None


def _extrapolate_group(
    previous: list[Tensor], params: list[Tensor], last: _LastStep, lr_next: float, steps: float, decay_next: float
) -> None:
    """Write ``theta_hat`` over ``previous`` (which holds ``theta_{t-1}``) for parameters at ``theta_t``.

    The last step made ``theta_t = rho * theta_{t-1} - lr_last * Delta`` with ``rho = 1 - lr_last * wd``; the
    rule's prediction ``theta_hat = delta * theta_t - s * lr_next * Delta`` (``delta = 1 - s * lr_next * wd_next``
    when the decay is predicted, else 1) is then, with ``r = s * lr_next / lr_last``,
    ``(delta + r) * theta_t - r * rho * theta_{t-1}``. Without a decay in play the two weights sum to 1 and this is
    one ``lerp``: ``theta_{t-1} + (1 + r) * (theta_t - theta_{t-1}) = theta_t + r * (theta_t - theta_{t-1})``.
    """
    r = steps * lr_next / last.lr
    rho, delta = 1.0 - last.lr * last.weight_decay, 1.0 - steps * lr_next * decay_next
    previous, params = [_real(t) for t in previous], [_real(t) for t in params]
    if last.weight_decay == 0.0 and decay_next == 0.0:
        torch._foreach_lerp_(previous, params, 1.0 + r)
    else:
        torch._foreach_mul_(previous, -r * rho)
        torch._foreach_add_(previous, params, alpha=delta + r)


def _save_previous_hook(predictor_ref: weakref.ReferenceType) -> Callable[..., None]:
    """A step pre-hook that does not keep the predictor alive (a dropped predictor costs the optimizer nothing)."""

    def hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        predictor = predictor_ref()
        if predictor is not None:
            predictor._save_previous()

    return hook


# --------------------------------------------------------------------------------------------- predictor


class _FlatBuffer:
    """One allocation holding a spare tensor (a view) for each of its parameters.

    Two layouts: :meth:`packed` places the spares one after another at 64-byte boundaries (aligned for vectorised
    kernels); :meth:`mirrored` copies the layout of the one storage that the parameters share (same offsets and
    strides), so that parameters packed together, such as cuDNN's flattened RNN weights, stay packed together.
    """

    def __init__(self, params: list[Tensor], offsets: list[int], strides: list[tuple[int, ...]], total: int) -> None:
        self.params = list(params)
        self.layouts = [_layout(p) for p in params]
        # A buffer first made under inference_mode must still be writable in training later.
        with torch.inference_mode(False):
            self.flat = torch.zeros(total, dtype=params[0].dtype, device=params[0].device)
            self.views = [self.flat.as_strided(p.shape, s, o) for p, s, o in zip(params, strides, offsets)]

    @classmethod
    def packed(cls, params: list[Tensor]) -> _FlatBuffer:
        """Spares one after another, each starting at a 64-byte boundary."""
        align = max(1, 64 // params[0].element_size())
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            total += -(-p.numel() // align) * align
        # Dense parameters (contiguous, channels_last) keep their strides; anything else gets the contiguous
        # layout of the same shape, which the swap accepts just as well.
        strides = [torch.empty_like(p, device="meta", memory_format=torch.preserve_format).stride() for p in params]
        return cls(params, offsets, strides, total)

    @classmethod
    def mirrored(cls, params: list[Tensor]) -> _FlatBuffer:
        """Spares at the parameters' own offsets (from the storage's start, where cuDNN looks) and strides.

        The buffer spans the storage up to the end of its last parameter: one copy when, as in cuDNN's flattened
        weights, the parameters fill the storage.
        """
        total = max(p.storage_offset() + _extent(p) for p in params)
        return cls(params, [p.storage_offset() for p in params], [p.stride() for p in params], total)

    def fits(self, params: list[Tensor]) -> bool:
        """Whether this buffer was made for exactly these parameters, with these shapes, strides and offsets."""
        return len(params) == len(self.params) and all(
            p is q and _layout(p) == layout for p, q, layout in zip(params, self.params, self.layouts)
        )


def _layout(p: Tensor) -> tuple:
    return p.device, p.dtype, p.shape, p.stride(), p.storage_offset()


def _extent(p: Tensor) -> int:
    """Elements from a tensor's first to one past its last element in its storage."""
    return 1 + sum((n - 1) * s for n, s in zip(p.shape, p.stride()))


def _storage(p: Tensor) -> tuple:
    return p.device, p.untyped_storage().data_ptr()


def _mirrorable(params: list[Tensor]) -> bool:
    """Parameters of one storage can get mirrored spares: one dtype, and no two of them overlap."""
    if any(p.dtype != params[0].dtype for p in params):
        return False
    spans = sorted((p.storage_offset(), p.storage_offset() + _extent(p)) for p in params)
    return all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))


def _plan_spares(params_by_group: list[list[Tensor]]) -> dict[tuple, list[Tensor]]:
    """Which spare buffer each parameter gets, as {buffer key: parameters}.

    Parameters that share one storage with another predicted parameter get a buffer that mirrors that storage
    (key ``("mirrored", device, storage)``), whatever their param groups; the others are packed, one buffer per
    param group, device and dtype (key ``("packed", group index, device, dtype)``).
    """
    by_storage: dict[tuple, list[Tensor]] = defaultdict(list)
    for params in params_by_group:
        for p in params:
            if p.numel():
                by_storage[_storage(p)].append(p)
    shared = {key for key, ps in by_storage.items() if len(ps) > 1 and _mirrorable(ps)}
    plan: dict[tuple, list[Tensor]] = defaultdict(list)
    for index, params in enumerate(params_by_group):
        for p in params:
            storage = _storage(p) if p.numel() else None
            plan[("mirrored", *storage) if storage in shared else ("packed", index, p.device, p.dtype)].append(p)
    return plan


def _real(tensor: Tensor) -> Tensor:
    """A complex tensor as its real view with a trailing (re, im) dimension; real tensors unchanged."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def _real_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: _real(v) if isinstance(v, Tensor) else v for k, v in state.items()}


def _validate_steps(steps: float) -> float:
    if isinstance(steps, bool) or not isinstance(steps, (int, float)):
        raise TypeError(f"steps must be a number >= 0, got {steps!r}")
    if not (math.isfinite(steps) and steps >= 0):
        raise ValueError(f"invalid steps={steps!r}: accepted a finite number >= 0 (0 turns prediction off)")
    return float(steps)


class WeightPredictor:
    """Swap an optimizer's parameters for their predicted values around forward and backward.

    ``theta_hat = theta - steps * lr * Delta``, with ``Delta`` the update direction of the optimizer's rule at
    its current state (see the registered rules: SGD with momentum, Adam, AdamW, AdaBelief, AdaM3), or, for any
    optimizer, the last update extrapolated (``method="extrapolate"``)::

        predictor = WeightPredictor(optimizer, steps=1)
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            with predictor:                  # parameters hold the predicted weights in here
                loss_fn(model(x), y).backward()
            optimizer.step()                 # gradients taken at theta_hat update theta

    With gradient accumulation, predict once per optimizer step: run every micro-batch's forward and backward
    inside one ``with`` block. Evaluate and save checkpoints outside it (inside, ``model.state_dict()`` holds
    the predicted weights). Backward must also finish inside the block.

    Extrapolation predicts, per param group, ``theta_t + s * (lr_next / lr_last) * (theta_t - theta_{t-1})``:
    ``lr_last`` is the group's lr when the last ``optimizer.step()`` started (recorded by a step pre-hook, which
    also saves ``theta_{t-1}`` into the spare buffer), ``lr_next`` its lr when ``predict()`` is called (after the
    scheduler's step: the lr of the step being predicted). For the registered optimizers (SGD with momentum
    without nesterov, Adam, AdamW, AdaBelief, AdaM3) this equals the rule to round-off. A decoupled weight decay
    declared by the group (AdamW, ``decoupled_weight_decay=True``) is taken out of the last update and handled as
    ``include_weight_decay`` says; an undeclared one (e.g. torch's Muon) stays part of the repeated update.
    Nothing moves before the first step, for a group whose last lr was 0, for a parameter without a gradient at
    the last step, after a step that GradScaler skipped, and in a second ``predict()`` before the next step
    (with no step since, there is no new update to repeat). Memory: the same one spare copy, for every parameter
    of the optimizer; ``state_dict()`` then carries ``theta_{t-1}`` (one copy of the parameters) so that a resumed
    run predicts bit-exactly as an uninterrupted one. Traffic per step: the pre-hook's copy of theta and one
    multi-tensor ``lerp`` (5 parameter-sized reads and writes, as the SGD rule; the Adam rules' eager path has 14;
    a predicted decoupled decay adds 2).

    ``steps`` may be fractional: the prediction is linear in ``s`` (``s = 0.5`` is half of one update, ``s = 2``
    the same update twice), for both methods.

    Args:
        optimizer: the optimizer to predict for.
        steps: the prediction horizon ``s >= 0``; 0 turns prediction off at no cost (no buffers).
        include_weight_decay: also predict a decoupled weight decay,
            ``theta_hat = theta * (1 - s * lr * wd) - s * lr * Delta`` (off by default, as in the paper).
        compile: fuse the Adam-family prediction into one ``torch.compile`` kernel per parameter group, device
            and dtype (about 2x faster than the default multi-tensor kernels; costs seconds of compilation per
            process and needs a working ``torch.compile``, else it warns and falls back). SGD and extrapolation
            are unaffected.
        method: ``"auto"`` (the registered rule where there is one, else extrapolation), ``"rule"`` (the
            registered rule; ``TypeError`` for an optimizer without one) or ``"extrapolate"``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        steps: float = 1.0,
        include_weight_decay: bool = False,
        compile: bool = False,
        method: str = "auto",
    ) -> None:
        self.optimizer = optimizer
        self.compile = bool(compile)
        self._method = _resolve_method(optimizer, method)
        self._rule = _find_rule(optimizer) if self._method == "rule" else None
        self._steps = _validate_steps(steps)
        self.include_weight_decay = bool(include_weight_decay)
        self._buffers: dict[tuple, _FlatBuffer] = {}
        self._caches: dict[tuple, dict[str, Any]] = defaultdict(dict)
        self._planned: list[list[int]] | None = None  # the parameters (ids per group) of the last plan of spares
        self._spare_of: dict[int, tuple[tuple, Tensor]] = {}
        self._swapped: list[tuple[Tensor, Tensor]] = []
        self._active = False
        # Extrapolation: the spare of each parameter while it holds theta_{t-1}, and the last step per group index.
        self._previous: dict[int, tuple[tuple, Tensor]] = {}
        self._last: dict[int, _LastStep] = {}
        if self._method == "extrapolate":
            handle = optimizer.register_step_pre_hook(_save_previous_hook(weakref.ref(self)))
            weakref.finalize(self, handle.remove)
        if self._steps > 0:
            self._check_groups()

    @property
    def method(self) -> str:
        """How the predicted weights are computed: ``"rule"`` or ``"extrapolate"`` (``"auto"`` resolved)."""
        return self._method

    @property
    def steps(self) -> float:
        """The prediction horizon ``s``."""
        return self._steps

    @property
    def active(self) -> bool:
        """Whether the parameters currently hold the predicted weights."""
        return self._active

    @property
    def buffer_bytes(self) -> int:
        """Bytes held by the spare buffers: one copy of the predicted parameters (plus 64-byte alignment)."""
        return sum(b.flat.numel() * b.flat.element_size() for b in self._buffers.values())

    def _check_groups(self) -> None:
        if self._rule is not None and self._rule.check_group is not None:
            for group in self.optimizer.param_groups:
                self._rule.check_group(group)

    def _spares(self, params_by_group: list[list[Tensor]]) -> dict[int, tuple[tuple, Tensor]]:
        """The spare of each parameter, as {id(param): (buffer key, view)}; buffers are made once and reused.

        A buffer is rebuilt only when its parameters or their layout change (then its compiled kernels go too);
        buffers no longer planned (e.g. the model moved to another device) are freed. The same parameters in the
        same layout (every step, normally) reuse the last plan: only their layouts are checked.
        """
        planned = [[id(p) for p in params] for params in params_by_group]
        if planned == self._planned and all(buffer.fits(buffer.params) for buffer in self._buffers.values()):
            return self._spare_of
        plan = _plan_spares(params_by_group)
        spares = {}
        for key, params in plan.items():
            buffer = self._buffers.get(key)
            if buffer is None or not buffer.fits(params):
                buffer = _FlatBuffer.mirrored(params) if key[0] == "mirrored" else _FlatBuffer.packed(params)
                self._buffers[key] = buffer
                for kind in [kind for kind in self._caches if kind[-1] == key]:  # specialised to the old shapes
                    del self._caches[kind]
            spares.update((id(p), (key, view)) for p, view in zip(params, buffer.views))
        for stale in set(self._buffers) - set(plan):
            del self._buffers[stale]
            for kind in [kind for kind in self._caches if kind[-1] == stale]:
                del self._caches[kind]
        self._planned, self._spare_of = planned, spares
        return spares

    def _batches(self) -> list[tuple[PredictionBatch, list[Tensor], list[Tensor]]]:
        """One batch per (group, device, dtype, spare buffer) of parameters with state, with params and spares."""
        key = self._rule.state_key
        groups = self.optimizer.param_groups
        chosen = [[p for p in g["params"] if (self.optimizer.state.get(p) or {}).get(key) is not None] for g in groups]
        spares = self._spares(chosen)
        batches = []
        for index, (group, params) in enumerate(zip(groups, chosen)):
            by_kind: dict[tuple, list[Tensor]] = defaultdict(list)
            for p in params:
                by_kind[(index, p.device, p.dtype, spares[id(p)][0])].append(p)
            for kind, ps in by_kind.items():
                views = [spares[id(p)][1] for p in ps]
                states = [self.optimizer.state[p] for p in ps]
                flat = self._buffers[kind[-1]].flat
                if len(ps) != len(self._buffers[kind[-1]].params):  # a mirrored storage shared with other groups
                    flat = None
                args = (ps, states, views, flat)
                if ps[0].is_complex():  # the rules see real (re, im) views, as torch's optimizers do
                    args = ([_real(p) for p in ps], [_real_state(st) for st in states], [_real(v) for v in views],
                            None if flat is None else _real(flat))  # fmt: skip
                batch = PredictionBatch(group, *args, self._steps, self.include_weight_decay, self.compile,
                                        self._caches[kind], self.optimizer)  # fmt: skip
                batches.append((batch, ps, views))
        return batches

    def _predict_by_rule(self) -> list[tuple[Tensor, Tensor]]:
        self._check_groups()
        swapped = []
        for batch, params, spares in self._batches():
            self._rule.fn(batch)
            swapped.extend(zip(params, spares))
        return swapped

    @torch.no_grad()
    def _save_previous(self) -> None:
        """Step pre-hook of extrapolation: keep theta_{t-1} in the spares and record what this step is."""
        if self._steps == 0:
            return
        if self._active:
            raise RuntimeError("optimizer.step() while the parameters hold predicted weights: call restore() first")
        groups = self.optimizer.param_groups
        self._previous = self._spares([g["params"] for g in groups])
        for buffer in self._buffers.values():
            torch._foreach_copy_(buffer.views, buffer.params)
        found_inf = getattr(self.optimizer, "found_inf", None)
        self._last = {}
        for index, g in enumerate(groups):
            moved = [p.grad is not None for p in g["params"]]
            self._last[index] = _LastStep(float(g["lr"]), _decoupled_weight_decay(self.optimizer, g), moved, found_inf)

    def _extrapolate(self) -> list[tuple[Tensor, Tensor]]:
        """Turn the spares' theta_{t-1} into theta_hat in place; the (parameter, spare) pairs to swap."""
        previous, self._previous = self._previous, {}  # used up: a second prediction before a step moves nothing
        intact = {key for key, buffer in self._buffers.items() if buffer.fits(buffer.params)}
        swapped = []
        for index, last in self._last.items():
            group = self.optimizer.param_groups[index]
            moved = []
            for p, stepped in zip(group["params"], last.moved):
                key, spare = previous.get(id(p), (None, None))
                if key in intact:  # else the parameter changed layout or device since the step: leave it be
                    swapped.append((p, spare))
                    if stepped:
                        moved.append((p, spare))
            lr_next = float(group["lr"])
            decay_next = _decoupled_weight_decay(self.optimizer, group) if self.include_weight_decay else 0.0
            # A skipped step left theta_t == theta_{t-1}, which extrapolates to theta_t unless a decay is in play.
            skipped = last.found_inf is not None and (last.weight_decay or decay_next) and bool(last.found_inf)
            if not moved or last.lr == 0.0 or skipped:
                continue  # the spares hold theta_t already: the last step did not move these parameters
            by_kind: dict[tuple, list[tuple[Tensor, Tensor]]] = defaultdict(list)
            for p, spare in moved:
                by_kind[(p.device, p.dtype)].append((p, spare))
            for kind in by_kind.values():
                params, spares = zip(*kind)
                _extrapolate_group(list(spares), list(params), last, lr_next, self._steps, decay_next)
        return swapped

    @torch.no_grad()
    def predict(self) -> None:
        """Replace the parameters by their predicted weights (raises if they already hold them)."""
        if self._active:
            raise RuntimeError("predict() called twice without restore(): the parameters already hold predictions")
        if self._steps > 0:
            swapped = self._predict_by_rule() if self._rule is not None else self._extrapolate()
            for p, predicted in swapped:
                theta = p.data
                p.data = predicted
                self._swapped.append((p, theta))
        self._active = True

    @torch.no_grad()
    def restore(self) -> None:
        """Put the original weights back, bit for bit (raises if there is no prediction to undo)."""
        if not self._active:
            raise RuntimeError("restore() called without a prediction: call predict() first")
        for p, theta in self._swapped:
            p.data = theta
        self._swapped.clear()
        self._active = False

    def __enter__(self) -> WeightPredictor:
        self.predict()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.restore()

    def state_dict(self) -> dict[str, Any]:
        """What to checkpoint: the settings and, for extrapolation, theta_{t-1} and the last step's lr.

        The rule's prediction is derived from the optimizer's state. Extrapolation's ``"previous"`` holds the
        spares' theta_{t-1} of every parameter in the optimizer's order (None before the first step and after a
        prediction): live views, like the optimizer's state dict, to be saved before training goes on.
        """
        state = {"method": self._method, "steps": self._steps, "include_weight_decay": self.include_weight_decay}
        if self._method == "extrapolate":
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            previous = [self._previous[id(p)][1] if id(p) in self._previous else None for p in params]
            state["previous"] = previous if self._previous else None
            groups = range(len(self.optimizer.param_groups))
            state["last_step"] = [asdict(self._last[i]) if i in self._last else None for i in groups]
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (a checkpoint of another method raises ``ValueError``)."""
        if self._active:
            raise RuntimeError("cannot load a state while the parameters hold predicted weights")
        saved = state.get("method", "rule")  # checkpoints from before extrapolation existed
        if saved != self._method:
            raise ValueError(f"the checkpoint predicts with method={saved!r}, this predictor with {self._method!r}")
        self._steps = _validate_steps(state["steps"])
        self.include_weight_decay = bool(state["include_weight_decay"])
        self._previous, self._last = {}, {}
        if self._steps == 0:  # prediction off: no buffers, as when built with steps=0
            self._buffers.clear()
            self._caches.clear()
            self._planned, self._spare_of = None, {}
        elif state.get("previous") is not None:
            groups = self.optimizer.param_groups
            last = [None if d is None else _LastStep(**d) for d in state["last_step"]]
            params = [p for g in groups for p in g["params"]]
            if len(last) != len(groups) or len(state["previous"]) != len(params):
                raise ValueError(
                    f"the checkpoint's predictor has {len(last)} param groups and {len(state['previous'])} "
                    f"parameters, the optimizer {len(groups)} and {len(params)}"
                )
            self._previous = self._spares([g["params"] if last[i] else [] for i, g in enumerate(groups)])
            for p, theta in zip(params, state["previous"]):
                if id(p) in self._previous:
                    self._previous[id(p)][1].copy_(theta)
            self._last = {i: step for i, step in enumerate(last) if step is not None}

    def __repr__(self) -> str:
        return (
            f"WeightPredictor({type(self.optimizer).__name__}, steps={self._steps:g}, method={self._method!r}, "
            f"include_weight_decay={self.include_weight_decay}, compile={self.compile})"
        )
