"""The measured prediction error: exact values on problems where the weights reached are known in closed form."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

from xgrad import WeightPredictor
from xgrad.prediction_error import PredictionErrorMeter

C = torch.tensor([3.0, -4.0], dtype=torch.float64)  # gradient of the linear loss C . theta


class Displace:
    """A stand-in predictor: inside the block the parameter is theta + offset(theta)."""

    def __init__(self, param, offset):
        self.param, self.offset = param, offset

    def __enter__(self):
        self.saved = self.param.data
        self.param.data = self.saved + self.offset(self.saved)

    def __exit__(self, *exc):
        self.param.data = self.saved


def run(meter, param, optimizer, predictor, epochs, steps_per_epoch):
    """Train the linear loss C . theta; the per-epoch results of the meter."""
    results = []
    for epoch in range(epochs):
        meter.start_epoch(epoch, steps_per_epoch)
        for step in range(steps_per_epoch):
            optimizer.zero_grad()
            with meter.around(predictor, step):
                (C @ param).backward()
            optimizer.step()
        results.append(meter.end_epoch())
    return results


def momentum_buffers(mu, n):
    """b_k / C for SGD with momentum mu (no dampening) on a constant gradient: b_1 = 1, b_k = mu b_{k-1} + 1."""
    b = [0.0, 1.0]
    for _ in range(n):
        b.append(mu * b[-1] + 1.0)
    return b


@pytest.mark.parametrize("s", [1.0, 2.0, 0.5, 1.5, 0.25, 1.75])
def test_sgdm_rule_error_on_a_linear_loss_is_the_closed_form(s):
    """theta_hat = theta_k - s lr b_k; the weights reached are theta_k - lr (w_1 b_{k+1} + ...), all along C:
    the cosine is exactly 1 and the error is |s b_k - D_k| / D_k with D_k the interpolated reached move."""
    mu, lr, n = 0.5, 0.1, 8
    theta = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    optimizer = torch.optim.SGD([theta], lr=lr, momentum=mu)
    meter = PredictionErrorMeter([theta], steps=s, every=1)
    [result] = run(meter, theta, optimizer, WeightPredictor(optimizer, steps=s), epochs=1, steps_per_epoch=n)

    b = momentum_buffers(mu, n + 3)
    f, c = math.floor(s), math.ceil(s)
    errors = []
    for k in range(1, n - c + 1):  # sampled after k >= 1 steps, and only while k + ceil(s) steps fit the epoch
        moves = [sum(b[k + 1 : k + j + 1]) for j in range(c + 1)]  # theta_k - theta_{k+j}, over lr C
        reached = moves[f] + (s - f) * (moves[c] - moves[f])
        errors.append(abs(s * b[k] - reached) / reached)
    assert result["prediction_error"] == pytest.approx(sum(errors) / len(errors), rel=1e-12, abs=0)
    assert result["prediction_cosine"] == pytest.approx(1.0, rel=1e-15)
    if s == 1.0:  # the closed form mu^k (1 - mu) / (1 - mu^{k+1}): 1/3 at k = 1
        assert errors[0] == pytest.approx(1 / 3, rel=1e-15)
        expected = [mu**k * (1 - mu) / (1 - mu ** (k + 1)) for k in range(1, n)]
        assert errors == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("s", [1.0, 3.0, 0.25, 2.5])
def test_an_exact_prediction_scores_zero(s):
    """Plain SGD on a linear loss moves by -lr C every step: predicting s times that is exact (extrapolation)."""
    lr = 0.05
    theta = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    optimizer = torch.optim.SGD([theta], lr=lr)
    meter = PredictionErrorMeter([theta], steps=s, every=2)
    predictor = Displace(theta, lambda t: -s * lr * C)
    for result in run(meter, theta, optimizer, predictor, epochs=2, steps_per_epoch=6):
        assert result["prediction_error"] == pytest.approx(0.0, abs=1e-12)
        assert result["prediction_cosine"] == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize(
    ("direction", "error", "cosine"),
    [
        (torch.tensor([4.0, 3.0], dtype=torch.float64), math.sqrt(2), 0.0),  # orthogonal to C, same length
        (C, 2.0, -1.0),  # the opposite move
        (torch.tensor([0.0, 0.0], dtype=torch.float64), 1.0, None),  # predicting no move: error 1, no cosine
    ],
)
def test_error_and_cosine_of_known_wrong_predictions(direction, error, cosine):
    lr = 0.05
    theta = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    optimizer = torch.optim.SGD([theta], lr=lr)
    meter = PredictionErrorMeter([theta], steps=1, every=1)
    [result] = run(meter, theta, optimizer, Displace(theta, lambda t: lr * direction), epochs=1, steps_per_epoch=4)
    assert result["prediction_error"] == pytest.approx(error, rel=1e-12)
    if cosine is None:
        assert "prediction_cosine" not in result
    else:
        assert result["prediction_cosine"] == pytest.approx(cosine, abs=1e-12)


@pytest.mark.parametrize(
    ("every", "steps_per_epoch", "expected"),
    [
        # offset min(3, 5) // 2 = 1: steps 1 and 4 of each epoch, but 4 + 2 > 5 (its weights 2 steps later are
        # in the next epoch), so run steps 1, 6, 11
        (3, 5, [1, 6, 11]),
        (10, 5, [2, 7, 12]),  # an epoch shorter than `every`: once, in its middle
        (1, 3, [1, 3, 4, 6, 7]),  # every step but the run's first and those 2 steps before an epoch's end
        (2, 6, [1, 3, 7, 9, 13, 15]),
    ],
)
def test_sampled_steps(every, steps_per_epoch, expected):
    theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = torch.optim.SGD([theta], lr=0.1)
    meter = PredictionErrorMeter([theta], steps=2, every=every)
    starts = []
    original = meter._start
    meter._start = lambda step: starts.append(meter._first + step) or original(step)
    results = run(meter, theta, optimizer, contextlib.nullcontext(), 3, steps_per_epoch)
    assert starts == expected
    assert all(r["prediction_error"] == pytest.approx(1.0) for r in results if r)  # no prediction: error 1


def test_weights_that_did_not_move_are_left_out():
    theta = nn.Parameter(torch.ones(2, dtype=torch.float64))
    optimizer = torch.optim.SGD([theta], lr=0.0)
    meter = PredictionErrorMeter([theta], steps=1, every=1)
    assert run(meter, theta, optimizer, contextlib.nullcontext(), epochs=1, steps_per_epoch=3) == [{}]


@pytest.mark.parametrize(("steps", "every"), [(0.0, 1), (math.inf, 1), (1.0, 0), (1.0, True), (1.0, 2.5)])
def test_bad_settings_are_rejected(steps, every):
    with pytest.raises(ValueError, match="invalid"):
        PredictionErrorMeter([nn.Parameter(torch.zeros(1))], steps=steps, every=every)


def test_training_run_records_prediction_error_per_epoch(tmp_path):
    from tests.conftest import TINY, make_cfg
    from xgrad.rundir import read_metrics
    from xgrad.trainer import train

    cfg = make_cfg([*TINY, "optimizer=sgdm", "predict=true", "prediction_error_every=1", "logger=tensorboard"])
    assert train(cfg, tmp_path).status == "completed"
    rows = read_metrics(tmp_path)
    assert len(rows) == 2
    for row in rows:
        assert 0 < row["prediction_error"] < 10 and -1 <= row["prediction_cosine"] <= 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    logged = [e.value for e in events.Scalars("prediction_error")]
    assert logged == pytest.approx([row["prediction_error"] for row in rows], rel=1e-6)


def test_off_without_prediction_or_with_zero(tmp_path):
    from tests.conftest import TINY, make_cfg
    from xgrad.rundir import read_metrics
    from xgrad.trainer import train

    for i, extra in enumerate((["predict=false"], ["predict=true", "prediction_error_every=0"])):
        train(make_cfg([*TINY, "epochs=1", *extra]), tmp_path / str(i))
        assert "prediction_error" not in read_metrics(tmp_path / str(i))[0]


@pytest.mark.parametrize(("value", "shown"), [(-1, "-1"), (2.5, "2.5"), (True, "true"), ("often", "'often'")])
def test_bad_prediction_error_every_is_a_config_error(tmp_path, value, shown):
    from tests.conftest import TINY, make_cfg
    from xgrad.errors import ConfigError
    from xgrad.trainer import train

    with pytest.raises(ConfigError, match=rf"prediction_error_every={shown}: accepted an integer >= 0"):
        train(make_cfg([*TINY, f"prediction_error_every={value}"]), tmp_path)


def test_cost_benchmark_script_runs(monkeypatch, capsys):
    import runpy
    import sys

    from tests.conftest import ROOT

    argv = ["bench_prediction_error.py", "--steps", "1", "--samples", "2", "--threads", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "scripts" / "bench_prediction_error.py"), run_name="__main__")
    assert "% of a step" in capsys.readouterr().out
