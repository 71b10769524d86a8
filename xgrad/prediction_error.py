"""How good the weight prediction was: predicted weights against the weights training really reached.

At a sampled optimizer step ``t`` the parameters are ``theta_t`` and the predictor replaces them by
``theta_hat``, its guess of the weights ``s`` steps later. Training then goes on, and the weights it reaches
``s`` steps later are

    theta_reached = theta_{t+f} + (s - f) * (theta_{t+c} - theta_{t+f}),    f = floor(s), c = ceil(s)

(``s`` rounded up to whole steps, linearly interpolated between the two steps around it for a fractional
``s``; for ``s < 1``, ``theta_{t+0} = theta_t``). Two numbers measure the prediction:

- the relative error ``|| theta_hat - theta_reached || / || theta_reached - theta_t ||`` (0 is perfect; 1 is
  what predicting no move at all scores),
- the cosine between the predicted displacement ``theta_hat - theta_t`` and the actual one
  ``theta_reached - theta_t``,

each over all parameters together (global norms). Each epoch samples its steps ``j = o, o + every, o + 2 every,
...`` (0-based) with ``o = min(every, steps in the epoch) // 2``, so an epoch shorter than ``every`` steps is
still sampled once, in its middle; left out are the run's very first step (no optimizer state yet) and steps
whose weights ``s`` steps later would fall in the next epoch (each epoch stands alone, so a resumed run
measures exactly what an uninterrupted one does). Each epoch reports the mean over its samples (no value when
it had none). Differences are accumulated in float64 so that ``theta_reached - theta_t`` does not lose digits
to cancellation. The cost: two float64 vectors of all the parameters per sample in flight (written parameter by
parameter, with no concatenated copy), a few passes over them per sample, and no host synchronisation until the
epoch's means are read.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["PredictionErrorMeter"]


@dataclass
class _Sample:
    """One prediction in flight, over all parameters as one float64 vector: ``predicted = theta_hat - theta_t``;
    ``actual`` accumulates to ``theta_reached - theta_t`` (it starts as ``-theta_t``, then gets each reached
    weight vector times its interpolation weight)."""

    start: int
    predicted: Tensor
    actual: Tensor
    #: step offset k -> interpolation weight of theta_{t+k} (the weights sum to 1).
    targets: dict[int, float] = field(default_factory=dict)


def _memory_order(t: Tensor) -> Tensor:
    """``t``'s elements as a 1-D view in memory order (the same order every time; a copy only if ``t`` is not
    dense, e.g. a strided slice). Complex tensors as (re, im) pairs."""
    t = torch.view_as_real(t) if t.is_complex() else t
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.as_strided((t.numel(),), (1,), t.storage_offset())
    return t.reshape(-1)


class PredictionErrorMeter:
    """Measure prediction error and cosine at sampled steps (see the module docstring).

    Used by the training loop as::

        meter.start_epoch(epoch, steps_per_epoch)
        for step in range(steps_per_epoch):
            with meter.around(predictor, step):   # the predictor's own block
                ...forward, backward...
            optimizer.step()
        metrics = meter.end_epoch()               # {"prediction_error": ..., "prediction_cosine": ...}

    Args:
        params: the parameters the predictor replaces (the model's).
        steps: the prediction horizon ``s > 0``.
        every: sample every ``every``-th optimizer step (>= 1).
    """

    def __init__(self, params: Iterable[Tensor], steps: float, every: int) -> None:
        if not (math.isfinite(steps) and steps > 0):
            raise ValueError(f"invalid steps={steps!r}: accepted a number > 0")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"invalid every={every!r}: accepted an integer >= 1")
        self.params = list(params)
        self._device = self.params[0].device if self.params else torch.device("cpu")
        self.steps, self.every = float(steps), every
        floor, ceil = math.floor(self.steps), math.ceil(self.steps)
        fraction = self.steps - floor
        self._weights = {floor: 1.0 - fraction, ceil: fraction} if floor != ceil else {floor: 1.0}
        self._horizon = ceil
        self._first = 0
        self._length = 0
        self._pending: list[_Sample] = []
        self._reset_sums()

    def _reset_sums(self) -> None:
        zero = lambda: torch.zeros((), dtype=torch.float64, device=self._device)  # noqa: E731
        self._error_sum, self._error_count = zero(), zero()
        self._cosine_sum, self._cosine_count = zero(), zero()

    def start_epoch(self, epoch: int, steps_per_epoch: int) -> None:
        """Begin epoch ``epoch`` (0-based) of ``steps_per_epoch`` optimizer steps."""
        self._first = epoch * steps_per_epoch
        self._length = steps_per_epoch
        self._pending.clear()
        self._reset_sums()

    def _sampled(self, step: int) -> bool:
        offset = min(self.every, self._length) // 2
        return step % self.every == offset and self._first + step > 0 and step + self._horizon <= self._length

    @contextlib.contextmanager
    def around(self, predictor: contextlib.AbstractContextManager, step: int) -> Iterator[None]:
        """``with predictor:``, recording ``theta_t`` and ``theta_hat`` when ``step`` (0-based in the epoch) is
        sampled, and the weights of earlier samples that this step's weights complete."""
        self._reached(step)
        sample = self._start(step) if self._sampled(step) else None
        with predictor:
            if sample is not None:  # the parameters hold theta_hat now; predicted = theta_hat - theta_t
                self._add_params(sample.predicted)
                self._pending.append(sample)
            yield

    def end_epoch(self) -> dict[str, float]:
        """Finish the epoch (its last weights complete the last samples): ``prediction_error`` and
        ``prediction_cosine``, the means over its samples (a key is left out when no sample measured it)."""
        self._reached(self._length)
        self._pending.clear()
        sums = torch.stack([self._error_sum, self._error_count, self._cosine_sum, self._cosine_count]).tolist()
        means = {}
        if sums[1]:
            means["prediction_error"] = sums[0] / sums[1]
        if sums[3]:
            means["prediction_cosine"] = sums[2] / sums[3]
        return means

    # ---------------------------------------------------------------------------------------------- internals

    def _add_params(self, vector: Tensor, alpha: float = 1.0) -> None:
        """``vector += alpha * theta`` (the parameters' current values), each parameter into its own slice: no
        temporary copy of the parameters, so a sample holds two float64 vectors and nothing more."""
        offset = 0
        for p in self.params:
            flat = _memory_order(p.detach())
            vector[offset : offset + flat.numel()].add_(flat, alpha=alpha)
            offset += flat.numel()

    def _start(self, step: int) -> _Sample:
        size = sum(2 * p.numel() if p.is_complex() else p.numel() for p in self.params)
        predicted = torch.zeros(size, dtype=torch.float64, device=self._device)
        self._add_params(predicted, -1.0)  # -theta_t
        sample = _Sample(step, predicted, predicted.clone(), dict(self._weights))
        if 0 in sample.targets:  # s < 1: theta_t itself is one end of the interpolation, -theta_t + w0 * theta_t
            sample.actual.mul_(1.0 - sample.targets.pop(0))
        return sample

    def _reached(self, step: int) -> None:
        """The parameters hold the weights after ``step`` steps of this epoch: feed the samples waiting for them."""
        if not self._pending:
            return
        for sample in list(self._pending):
            weight = sample.targets.pop(step - sample.start, None)
            if weight is None:
                continue
            self._add_params(sample.actual, weight)
            if not sample.targets:
                self._finish(sample)
                self._pending.remove(sample)

    def _finish(self, sample: _Sample) -> None:
        predicted, actual = sample.predicted, sample.actual
        actual_norm = torch.linalg.vector_norm(actual)
        predicted_norm = torch.linalg.vector_norm(predicted)
        miss = torch.linalg.vector_norm(predicted.sub_(actual))  # || theta_hat - theta_reached ||
        dot = (predicted_norm**2 + actual_norm**2 - miss**2) / 2  # <predicted, actual>, from the three norms
        moved = actual_norm > 0
        both = moved & (predicted_norm > 0)
        # Samples where the weights did not move (lr 0, a skipped step) have no relative error; no host sync here.
        self._error_sum += torch.where(moved, miss / actual_norm, 0.0)
        self._error_count += moved
        self._cosine_sum += torch.where(both, dot / (actual_norm * predicted_norm), 0.0)
        self._cosine_count += both
