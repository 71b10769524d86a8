"""WeightPredictor(method="extrapolate"): the last update repeated, against the rules and against its definition."""

from __future__ import annotations

import copy
import gc
import io

import pytest
import torch
from torch import nn

from xgrad import WeightPredictor
from xgrad.optim import AdaBelief, AdaM3
from xgrad.rundir import read_summary

from .test_predict import make_params, pack_into_one_storage, storage_of

# The five optimizers with a rule, in the settings where extrapolation is exact (nesterov is not: its rule
# approximates the unknown next gradient), plus torch's fused Adam and AdamW.
RULE_OPTIMIZERS = {
    "sgdm": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "sgdm-damp-l2": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2),
    "adam-l2": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adam-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adamw-amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
    "adam-fused": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2, fused=True),
    "adamw-fused": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, fused=True),
    "adabelief": lambda p: AdaBelief(p, lr=1e-2, weight_decay=1e-2),
    "adabelief-decoupled": lambda p: AdaBelief(p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    "adam3": lambda p: AdaM3(p, lr=1e-2, weight_decay=1e-2),
    "adam3-decoupled-amsgrad": lambda p: AdaM3(p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True),
}


def assert_same_prediction(got: list[torch.Tensor], want: list[torch.Tensor], theta: list[torch.Tensor]) -> None:
    """Equal to round-off relative to the predicted displacement (the part extrapolation computes)."""
    for g, w, t in zip(got, want, theta):
        assert (g - w).norm() <= 1e-11 * (w - t).norm() + 1e-15, ((g - w).norm(), (w - t).norm())


def predicted(predictor: WeightPredictor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    with predictor:
        return [p.detach().clone() for p in params]


@pytest.mark.parametrize("include_wd", [False, True], ids=["wd-out", "wd-in"])
@pytest.mark.parametrize("steps", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("schedule", ["cosine-every-step", "decay-every-epoch"])
@pytest.mark.parametrize("name", list(RULE_OPTIMIZERS))
def test_extrapolation_equals_the_rule(name, schedule, steps, include_wd):
    params = make_params()
    optimizer = RULE_OPTIMIZERS[name](params)
    if schedule == "cosine-every-step":
        scheduler, epoch_length = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=12), 1
    else:
        scheduler, epoch_length = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.3), 3
    rule = WeightPredictor(optimizer, steps, include_wd, method="rule")
    extrapolation = WeightPredictor(optimizer, steps, include_wd, method="extrapolate")
    g = torch.Generator().manual_seed(1)
    for step in range(10):
        theta = [p.detach().clone() for p in params]
        if step == 0:  # no previous step: nothing to repeat, and no state for the rule either
            assert all(torch.equal(a, b) for a, b in zip(predicted(extrapolation, params), theta))
        else:
            assert_same_prediction(predicted(extrapolation, params), predicted(rule, params), theta)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        optimizer.step()
        if (step + 1) % epoch_length == 0:
            scheduler.step()


def test_groups_of_different_lrs_frozen_gradless_and_a_group_added_mid_run():
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(4, dtype=torch.float64)), nn.Parameter(torch.randn(3, dtype=torch.float64))
    frozen = nn.Parameter(torch.randn(2, dtype=torch.float64), requires_grad=False)
    late = nn.Parameter(torch.randn(5, dtype=torch.float64))
    optimizer = torch.optim.AdamW([{"params": [a, frozen], "lr": 0.1}, {"params": [b], "lr": 0.01}], weight_decay=0.1)
    rule = WeightPredictor(optimizer, method="rule")
    extrapolation = WeightPredictor(optimizer, method="extrapolate")
    for step in range(8):
        for group in optimizer.param_groups:  # every group's lr changes every step, each its own way
            group["lr"] *= 0.9 if group["params"][0] is not late else 1.2
        params = [a, b, frozen] + ([late] if step > 3 else [])
        theta = [p.detach().clone() for p in params]
        got, want = predicted(extrapolation, params), predicted(rule, params)
        assert torch.equal(got[2], theta[2]) and torch.equal(want[2], theta[2])  # frozen: never moves
        keep = list(range(len(params)))
        if step == 5:  # b got no gradient at the last step: extrapolation moves nothing, the rule uses stale state
            assert torch.equal(got[1], theta[1]) and not torch.equal(want[1], theta[1])
            keep.remove(1)
        assert_same_prediction([got[i] for i in keep], [want[i] for i in keep], [theta[i] for i in keep])
        if step == 3:
            optimizer.add_param_group({"params": [late], "lr": 0.05})
        for p in (a, b, late):
            p.grad = torch.randn_like(p)
        if step == 4:
            b.grad = None
        optimizer.step()


def test_a_resumed_run_predicts_bit_exactly_as_an_uninterrupted_one():
    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
        return model, optimizer, scheduler, WeightPredictor(optimizer, steps=2, method="extrapolate")

    def train(model, optimizer, scheduler, predictor, n, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(n):
            x, y = torch.randn(16, 5, generator=g), torch.randn(16, 2, generator=g)
            optimizer.zero_grad(set_to_none=True)
            with predictor:
                nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            scheduler.step()

    run = build()
    train(*run, n=3, seed=1)
    buffer = io.BytesIO()
    torch.save([part.state_dict() for part in run], buffer)
    train(*run, n=3, seed=2)

    def resume(drop_previous: bool = False):
        resumed = build()
        buffer.seek(0)
        states = torch.load(buffer, weights_only=False)
        if drop_previous:
            states[3]["previous"] = None
        for part, state in zip(resumed, states):
            part.load_state_dict(state)
        train(*resumed, n=3, seed=2)
        return resumed[0]

    assert all(torch.equal(p, q) for p, q in zip(run[0].parameters(), resume().parameters()))
    # The saved theta_{t-1} matters: without it the first prediction after resuming is lost.
    assert not all(torch.equal(p, q) for p, q in zip(run[0].parameters(), resume(drop_previous=True).parameters()))


class SignMomentum(torch.optim.Optimizer):
    """An optimizer without a rule: the sign of a momentum buffer (a Lion-like update, defined here)."""

    def __init__(self, params, lr=1e-2, beta=0.9):
        super().__init__(params, {"lr": lr, "beta": beta})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    m = self.state[p].setdefault("m", torch.zeros_like(p))
                    m.mul_(group["beta"]).add_(p.grad, alpha=1 - group["beta"])
                    p.add_(m.sign(), alpha=-group["lr"])


NO_RULE = {
    "nadam": lambda p: torch.optim.NAdam(p, lr=1e-2, weight_decay=1e-2),
    "muon": lambda p: torch.optim.Muon(p, lr=2e-2),  # 2-D weights only; its decoupled decay is undeclared
    "sign-momentum": lambda p: SignMomentum(p),
}


@pytest.mark.parametrize("steps", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("name", list(NO_RULE))
def test_optimizers_without_a_rule_repeat_the_last_update(name, steps):
    g = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64)) for shape in [(6, 4), (3, 5)]]
    optimizer = NO_RULE[name](params)
    predictor = WeightPredictor(optimizer, steps=steps)
    assert predictor.method == "extrapolate"
    for _ in range(4):
        before = [p.detach().clone() for p in params]
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        optimizer.step()
        theta = [p.detach().clone() for p in params]
        want = [t + steps * (t - b) for t, b in zip(theta, before)]
        for got, w, t in zip(predicted(predictor, params), want, theta):
            assert not torch.equal(got, t)
            torch.testing.assert_close(got, w, rtol=1e-15, atol=1e-15)


def test_a_second_prediction_before_the_next_step_moves_nothing():
    params = make_params()
    optimizer = torch.optim.NAdam(params, lr=0.1)
    predictor = WeightPredictor(optimizer)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    theta = [p.detach().clone() for p in params]
    assert not any(torch.equal(a, b) for a, b in zip(predicted(predictor, params), theta))
    assert all(torch.equal(a, b) for a, b in zip(predicted(predictor, params), theta))


@pytest.mark.parametrize("fused", [False, True])
def test_a_step_skipped_by_grad_scaler_moves_nothing(fused):
    """Non-fused: GradScaler does not call step(). Fused: step() runs and the kernel skips on found_inf (the
    decoupled decay would otherwise make an unmoved parameter look like it moved)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    predictor = WeightPredictor(optimizer, method="extrapolate")
    x = torch.randn(8, 4)
    for scale in (1.0, 1.0, float("inf")):
        optimizer.zero_grad(set_to_none=True)
        with predictor:
            scaler.scale(model(x * scale).pow(2).mean()).backward()
        scaler.step(optimizer)
        scaler.update()
    assert scaler.get_scale() == 2.0  # the last step was skipped
    theta = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(predicted(predictor, list(model.parameters())), theta))


@pytest.mark.parametrize("two_groups", [False, True])
def test_extrapolation_keeps_shared_storage_mirrored(two_groups):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    packed = list(model.parameters())
    pack_into_one_storage(packed, lead=3)
    groups = [{"params": packed[::2]}, {"params": packed[1::2], "lr": 0.02}] if two_groups else [{"params": packed}]
    optimizer = torch.optim.AdamW(groups, lr=0.1, weight_decay=0.1)
    rule = WeightPredictor(optimizer, method="rule")
    extrapolation = WeightPredictor(optimizer, method="extrapolate")
    layouts = [(storage_of(p), p.storage_offset(), p.stride()) for p in packed]
    for _ in range(3):
        for p in packed:
            p.grad = torch.randn_like(p)
        optimizer.step()
        theta = [p.detach().clone() for p in packed]
        want = predicted(rule, packed)
        with extrapolation:
            spare = storage_of(packed[0])
            assert spare != layouts[0][0]
            assert [(storage_of(p), p.storage_offset(), p.stride()) for p in packed] == [
                (spare, offset, stride) for _, offset, stride in layouts
            ]
            assert_same_prediction([p.detach().clone() for p in packed], want, theta)
        assert [(storage_of(p), p.storage_offset(), p.stride()) for p in packed] == layouts
        assert all(torch.equal(p.detach(), t) for p, t in zip(packed, theta))


def test_memory_is_one_copy_and_a_dropped_predictor_costs_nothing():
    params = make_params(torch.float32)
    optimizer = torch.optim.RMSprop(params, lr=0.01)
    predictor = WeightPredictor(optimizer)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
        with predictor:
            pass
    param_bytes = sum(p.numel() * 4 for p in params)
    assert param_bytes <= predictor.buffer_bytes <= param_bytes + 64 * len(params)
    with predictor, pytest.raises(RuntimeError, match="restore"):
        optimizer.step()
    del predictor
    gc.collect()
    assert not optimizer._optimizer_step_pre_hooks  # the hook went with the predictor
    optimizer.step()


def test_checkpoint_of_another_method_is_refused():
    params = make_params()
    optimizer = torch.optim.Adam(params)
    state = WeightPredictor(optimizer, method="rule").state_dict()
    with pytest.raises(ValueError, match=r"method='rule'.*'extrapolate'"):
        WeightPredictor(optimizer, method="extrapolate").load_state_dict(state)
    old = {"steps": 1.0, "include_weight_decay": False}  # a checkpoint from before extrapolation existed
    WeightPredictor(optimizer, method="rule").load_state_dict(copy.deepcopy(old))


def test_runner_kill_and_resume_with_extrapolation_is_exact(tmp_path, monkeypatch):
    """Through the real runner: the checkpoint carries theta_{t-1}, so a killed and resumed run matches."""
    from .conftest import TINY, assert_resume_is_exact

    overrides = [*TINY, "epochs=3", "optimizer=adamw", "predict=true", "predict_method=extrapolate",
                 "scheduler=cosine"]  # fmt: skip
    whole = assert_resume_is_exact(overrides, tmp_path, monkeypatch)
    assert read_summary(whole)["predict_method"] == "extrapolate"


@pytest.mark.parametrize("case", ["warmup-from-0", "tensor-lr", "epoch-schedule-accum"])
def test_extrapolation_equals_the_rule_under_warmup_tensor_lr_and_accumulation(case):
    """Warmup from lr 0 (the step after a zero-lr step has nothing to repeat; the rule still moves), a float64
    tensor lr, and a per-epoch schedule with 3 micro-batches per step: afterwards equal to the rule to round-off."""
    params = make_params()
    if case == "tensor-lr":
        optimizer = torch.optim.AdamW(params, lr=torch.tensor(1e-2, dtype=torch.float64), weight_decay=0.1,
                                      foreach=False)  # fmt: skip
        scheduler, every = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=8), 1
    elif case == "warmup-from-0":
        optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
        scheduler, every = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, k / 3)), 1
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
        scheduler, every = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5), 2
    rule = WeightPredictor(optimizer, 2.5, True, method="rule")
    extrapolation = WeightPredictor(optimizer, 2.5, True, method="extrapolate")
    g = torch.Generator().manual_seed(3)
    for step in range(8):
        theta = [p.detach().clone() for p in params]
        got, want = predicted(extrapolation, params), predicted(rule, params)
        if step == 0 or (case == "warmup-from-0" and step == 1):  # no step yet, or the last one had lr 0
            assert all(torch.equal(a, b) for a, b in zip(got, theta))
        else:
            assert_same_prediction(got, want, theta)
        for p in params:
            p.grad = sum(torch.randn(p.shape, generator=g, dtype=p.dtype) for _ in range(3)) / 3  # 3 micro-batches
        optimizer.step()
        if (step + 1) % every == 0:
            scheduler.step()
