"""WeightPredictor: every rule against an independent float64 re-computation, and the predictor's contract."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from xgrad import WeightPredictor
from xgrad.optim import AdaBelief, AdaM3

# (id, optimizer factory, kind used by the reference): every supported setting, foreach on and off.
SETTINGS = []
for _foreach in (True, False):
    _f = {"foreach": _foreach}
    SETTINGS += [
        (f"sgdm-{_foreach}", lambda p, f=_f: torch.optim.SGD(p, lr=0.1, momentum=0.9, **f)),
        (
            f"sgdm-damp-wd-{_foreach}",
            lambda p, f=_f: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2, **f),
        ),
        (
            f"sgd-nesterov-{_foreach}",
            lambda p, f=_f: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, **f),
        ),
        (f"adam-{_foreach}", lambda p, f=_f: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2, **f)),
        (f"adam-amsgrad-{_foreach}", lambda p, f=_f: torch.optim.Adam(p, lr=1e-2, amsgrad=True, **f)),
        (
            f"adam-decoupled-{_foreach}",
            lambda p, f=_f: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, **f),
        ),
        (f"adamw-{_foreach}", lambda p, f=_f: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, **f)),
        (f"adamw-amsgrad-{_foreach}", lambda p, f=_f: torch.optim.AdamW(p, lr=1e-2, amsgrad=True, **f)),
        (f"adabelief-{_foreach}", lambda p, f=_f: AdaBelief(p, lr=1e-2, weight_decay=1e-2, **f)),
        (
            f"adabelief-decoupled-amsgrad-{_foreach}",
            lambda p, f=_f: AdaBelief(
                p, lr=1e-2, eps=1e-12, weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True, **f
            ),
        ),
        (f"adam3-{_foreach}", lambda p, f=_f: AdaM3(p, lr=1e-2, weight_decay=1e-2, **f)),
        (
            f"adam3-decoupled-amsgrad-{_foreach}",
            lambda p, f=_f: AdaM3(p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True, **f),
        ),
    ]
SETTING_IDS = [s[0] for s in SETTINGS]


def reference_prediction(optimizer, p: torch.Tensor, steps: float, include_wd: bool) -> torch.Tensor:
    """theta_hat from the published rules, in float64, one parameter at a time (no shared code with xgrad)."""
    state = optimizer.state[p]
    group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
    theta = p.detach().double()
    if not state:
        return theta
    lr = float(group["lr"])
    if isinstance(optimizer, torch.optim.SGD):
        return theta - steps * lr * state["momentum_buffer"].double()
    beta1, beta2 = group["betas"]
    t = float(state["step"])
    m_hat = state["exp_avg"].double() / (1 - beta1**t)
    v = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
    v_hat = v.double() / (1 - beta2**t)
    if isinstance(optimizer, AdaM3):
        delta = m_hat / v_hat.sqrt()
    else:
        delta = m_hat / (v_hat.sqrt() + group["eps"])
    decoupled = group.get("decoupled_weight_decay", False)
    decay = 1 - steps * lr * group["weight_decay"] if (include_wd and decoupled) else 1.0
    return theta * decay - steps * lr * delta


def make_params(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    return [nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def random_steps(optimizer, params, n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        optimizer.step()


@pytest.mark.parametrize("steps", [1.0, 0.37, 2.5])
@pytest.mark.parametrize("include_wd", [False, True])
@pytest.mark.parametrize(("name", "factory"), [s[:2] for s in SETTINGS], ids=SETTING_IDS)
def test_rule_matches_reference(name, factory, steps, include_wd):
    params = make_params()
    optimizer = factory(params)
    random_steps(optimizer, params)
    theta = [p.detach().clone() for p in params]
    expected = [reference_prediction(optimizer, p, steps, include_wd) for p in params]
    predictor = WeightPredictor(optimizer, steps=steps, include_weight_decay=include_wd)
    with predictor:
        assert predictor.active
        for p, want, before in zip(params, expected, theta):
            torch.testing.assert_close(p.detach(), want, rtol=1e-13, atol=1e-14)
            assert not torch.equal(p.detach(), before)
    assert not predictor.active
    for p, before in zip(params, theta):
        assert torch.equal(p.detach(), before)


def test_decoupled_decay_only_with_include_weight_decay():
    params = make_params()
    optimizer = torch.optim.AdamW(params, lr=0.1, weight_decay=0.5)
    random_steps(optimizer, params)
    with WeightPredictor(optimizer):
        plain = [p.detach().clone() for p in params]
    with WeightPredictor(optimizer, include_weight_decay=True):
        decayed = [p.detach().clone() for p in params]
    for a, b, p in zip(plain, decayed, params):
        torch.testing.assert_close(b, a - 0.1 * 0.5 * p.detach(), rtol=1e-13, atol=1e-14)


def test_l2_adam_ignores_include_weight_decay():
    params = make_params()
    optimizer = torch.optim.Adam(params, lr=0.1, weight_decay=0.5)
    random_steps(optimizer, params)
    with WeightPredictor(optimizer):
        plain = [p.detach().clone() for p in params]
    with WeightPredictor(optimizer, include_weight_decay=True):
        same = [p.detach().clone() for p in params]
    assert all(torch.equal(a, b) for a, b in zip(plain, same))


# ----------------------------------------------------------------------------------- the contract


def test_restore_is_bit_exact_when_body_raises():
    params = make_params(torch.float32)
    optimizer = torch.optim.Adam(params, lr=0.1)
    random_steps(optimizer, params)
    before = [p.detach().clone() for p in params]
    predictor = WeightPredictor(optimizer)
    with pytest.raises(KeyError), predictor:
        raise KeyError("boom")
    assert not predictor.active
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))


def test_forward_and_backward_see_predicted_weights():
    torch.manual_seed(0)
    n = 6
    q = torch.randn(n, n, dtype=torch.float64)
    a = q @ q.T + n * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, dtype=torch.float64)
    theta = nn.Parameter(torch.randn(n, dtype=torch.float64))
    optimizer = torch.optim.SGD([theta], lr=0.05, momentum=0.9)
    predictor = WeightPredictor(optimizer, steps=1.5)
    for _ in range(4):
        optimizer.zero_grad(set_to_none=True)
        buf = optimizer.state[theta].get("momentum_buffer")
        theta_hat = theta.detach() - 1.5 * 0.05 * buf if buf is not None else theta.detach().clone()
        with predictor:
            loss = 0.5 * theta @ a @ theta - b @ theta
            loss.backward()
        torch.testing.assert_close(theta.grad, a @ theta_hat - b, rtol=1e-12, atol=1e-12)
        optimizer.step()


def test_predict_twice_or_restore_without_predict_raises():
    params = make_params()
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    predictor = WeightPredictor(optimizer)
    with pytest.raises(RuntimeError, match="restore"):
        predictor.restore()
    predictor.predict()
    with pytest.raises(RuntimeError, match="twice"):
        predictor.predict()
    predictor.restore()


def test_unsupported_optimizer_and_bad_settings():
    params = make_params()
    with pytest.raises(TypeError, match=r"RMSprop.*supported optimizers:.*AdamW.*extrapolate"):
        WeightPredictor(torch.optim.RMSprop(params), method="rule")
    assert WeightPredictor(torch.optim.RMSprop(params)).method == "extrapolate"  # auto: no rule, so extrapolation
    assert WeightPredictor(torch.optim.Adam(params)).method == "rule"
    with pytest.raises(ValueError, match=r"method='extra'.*'auto'.*'rule'.*'extrapolate'"):
        WeightPredictor(torch.optim.Adam(params), method="extra")
    with pytest.raises(ValueError, match=r"momentum=0.*method='extrapolate'"):
        WeightPredictor(torch.optim.SGD(params, lr=0.1))
    assert WeightPredictor(torch.optim.SGD(params, lr=0.1), method="extrapolate").method == "extrapolate"
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="steps"):
            WeightPredictor(torch.optim.Adam(params), steps=bad)
    with pytest.raises(TypeError, match="steps"):
        WeightPredictor(torch.optim.Adam(params), steps="1")


def _trajectory(factory, predictor_steps, n=6, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    optimizer = factory(model.parameters())
    predictor = None if predictor_steps is None else WeightPredictor(optimizer, steps=predictor_steps)
    x, y = torch.randn(16, 5), torch.randn(16, 2)
    for _ in range(n):
        optimizer.zero_grad(set_to_none=True)
        if predictor is None:
            nn.functional.mse_loss(model(x), y).backward()
        else:
            with predictor:
                nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()], predictor


@pytest.mark.parametrize(("name", "factory"), [s[:2] for s in SETTINGS if s[0].endswith("True")])
def test_steps_zero_is_bit_identical_to_no_predictor(name, factory):
    plain, _ = _trajectory(factory, None)
    off, predictor = _trajectory(factory, 0)
    on, _ = _trajectory(factory, 1)
    assert all(torch.equal(a, b) for a, b in zip(plain, off))
    assert not all(torch.equal(a, b) for a, b in zip(plain, on))
    assert predictor.buffer_bytes == 0


def test_buffers_are_one_copy_allocated_once():
    params = make_params(torch.float32)
    optimizer = torch.optim.Adam(params, lr=0.1)
    predictor = WeightPredictor(optimizer)
    random_steps(optimizer, params, n=1)
    with predictor:
        pass
    spares = {id(b.flat) for b in predictor._buffers.values()}
    for _ in range(3):
        random_steps(optimizer, params, n=1)
        with predictor:
            pass
    assert {id(b.flat) for b in predictor._buffers.values()} == spares
    param_bytes = sum(p.numel() * 4 for p in params)
    assert param_bytes <= predictor.buffer_bytes <= param_bytes + 64 * len(params)


def test_gradient_accumulation_predicts_once_per_step():
    torch.manual_seed(0)
    model = nn.Linear(4, 1, dtype=torch.float64)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    predictor = WeightPredictor(optimizer)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    random_steps(optimizer, list(model.parameters()), n=3)
    optimizer.zero_grad(set_to_none=True)
    with predictor:
        predicted = copy.deepcopy(model)
        for chunk_x, chunk_y in zip(x.split(4), y.split(4)):
            (nn.functional.mse_loss(model(chunk_x), chunk_y) / 2).backward()
    # The accumulated gradient is the full-batch gradient at the predicted weights.
    nn.functional.mse_loss(predicted(x), y).backward()
    for p, q in zip(model.parameters(), predicted.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)
        assert not torch.equal(p.detach(), q.detach())


def test_param_groups_scheduler_frozen_and_gradless_params():
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(4, dtype=torch.float64)), nn.Parameter(torch.randn(3, dtype=torch.float64))
    frozen = nn.Parameter(torch.randn(2, dtype=torch.float64), requires_grad=False)
    late = nn.Parameter(torch.randn(2, dtype=torch.float64))
    optimizer = torch.optim.Adam([{"params": [a, frozen, late], "lr": 0.1}, {"params": [b], "lr": 0.01}])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    predictor = WeightPredictor(optimizer)
    for step in range(4):
        a.grad, b.grad = torch.randn(4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
        late.grad = torch.randn(2, dtype=torch.float64) if step == 3 else None  # no gradient until the last step
        if step == 2:
            b.grad = None  # b gets no gradient this step: its state is stale but still predicts
        optimizer.step()
        scheduler.step()
    assert optimizer.state[late]["step"] == 1 and optimizer.state[a]["step"] == 4
    expected = {id(p): reference_prediction(optimizer, p, 1.0, False) for p in (a, b, frozen, late)}
    before = frozen.detach().clone()
    with predictor:
        for p in (a, b, late):
            torch.testing.assert_close(p.detach(), expected[id(p)], rtol=1e-13, atol=1e-14)
        assert torch.equal(frozen.detach(), before)
    assert optimizer.param_groups[0]["lr"] == 0.1 * 0.5**4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mixed_steps", [False, True])
def test_zero_second_moments_predict_no_change(dtype, mixed_steps):
    """Embedding rows that never got a gradient have m = v = 0 exactly: their prediction is theta, not nan.

    The CPU kernel takes the square root as 1 / rsqrt(v) (rsqrt(0) = inf), so zeros are the edge case.
    """
    torch.manual_seed(0)
    embedding = nn.Parameter(torch.randn(50, 8, dtype=dtype))
    other = nn.Parameter(torch.randn(8, dtype=dtype))
    optimizer = torch.optim.AdamW([embedding, other], lr=1e-2, weight_decay=0.1)
    for step in range(3):
        embedding.grad = torch.zeros_like(embedding)
        embedding.grad[:5] = torch.randn(5, 8, dtype=dtype)  # only the first 5 rows are ever used
        other.grad = torch.randn(8, dtype=dtype) if (step == 0 or not mixed_steps) else None
        optimizer.step()
    assert (optimizer.state[embedding]["exp_avg_sq"][5:] == 0).all()
    expected = reference_prediction(optimizer, embedding, 1.0, False)
    expected_other = reference_prediction(optimizer, other, 1.0, False)
    tol = {"rtol": 1e-6, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-13, "atol": 1e-14}
    rows_before = embedding.detach()[5:].clone()
    with WeightPredictor(optimizer):
        assert torch.equal(embedding.detach()[5:], rows_before)
        torch.testing.assert_close(embedding.detach().double(), expected, **tol)
        torch.testing.assert_close(other.detach().double(), expected_other, **tol)


def test_parameter_without_state_is_unchanged():
    params = make_params()
    optimizer = torch.optim.AdamW(params)
    before = [p.detach().clone() for p in params]
    with WeightPredictor(optimizer):
        assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))


def test_bf16_and_fp32_parameters_together():
    torch.manual_seed(0)
    p32 = nn.Parameter(torch.randn(16))
    p16 = nn.Parameter(torch.randn(16, dtype=torch.bfloat16))
    optimizer = torch.optim.Adam([p32, p16], lr=0.1, foreach=True)
    random_steps(optimizer, [p32, p16])
    expected = [reference_prediction(optimizer, p, 1.0, False) for p in (p32, p16)]
    with WeightPredictor(optimizer):
        torch.testing.assert_close(p32.detach().double(), expected[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(p16.detach().double(), expected[1], rtol=2e-2, atol=2e-2)
        assert p16.dtype == torch.bfloat16


def test_optimizer_state_dict_round_trip_mid_training():
    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
        return model, AdaBelief(model.parameters(), lr=1e-2)

    def train(model, optimizer, predictor, n, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(n):
            x, y = torch.randn(16, 5, generator=g), torch.randn(16, 2, generator=g)
            optimizer.zero_grad(set_to_none=True)
            with predictor:
                nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()

    model, optimizer = build()
    predictor = WeightPredictor(optimizer, steps=2)
    train(model, optimizer, predictor, 3, seed=1)
    saved = copy.deepcopy({"m": model.state_dict(), "o": optimizer.state_dict(), "p": predictor.state_dict()})
    train(model, optimizer, predictor, 3, seed=2)

    model2, optimizer2 = build()
    model2.load_state_dict(saved["m"])
    optimizer2.load_state_dict(saved["o"])
    predictor2 = WeightPredictor(optimizer2)
    predictor2.load_state_dict(saved["p"])
    assert predictor2.steps == 2
    train(model2, optimizer2, predictor2, 3, seed=2)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_grad_scaler_skipped_step_keeps_prediction():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    predictor = WeightPredictor(optimizer)
    x = torch.randn(8, 4)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        with predictor:
            scaler.scale(model(x).pow(2).mean()).backward()
        scaler.step(optimizer)
        scaler.update()
    with predictor:
        before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad(set_to_none=True)
    with predictor:
        scaler.scale(model(x * float("inf")).sum()).backward()  # non-finite gradients: the step is skipped
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 2.0
    with predictor:
        assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))


def test_fused_adam_skipped_first_step_keeps_weights():
    """Fused Adam under GradScaler takes a skipped first step back (state exists, step == 0): no prediction yet."""
    torch.manual_seed(0)
    first, second = nn.Linear(4, 3), nn.Linear(3, 2)
    optimizer = torch.optim.Adam([*first.parameters(), *second.parameters()], lr=0.1, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    predictor = WeightPredictor(optimizer)
    with predictor:
        scaler.scale(second(first(torch.randn(5, 4) * float("inf"))).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    assert float(optimizer.state[first.weight]["step"]) == 0.0
    optimizer.zero_grad(set_to_none=True)
    second.weight.grad = torch.randn(2, 3)
    optimizer.step()  # now one parameter has taken a step and the others have not
    params = [*first.parameters(), *second.parameters()]
    expected = [reference_prediction(optimizer, p, 1.0, False).float() for p in params]
    before = [p.detach().clone() for p in params]
    with predictor:
        for p, want, theta, stepped in zip(params, expected, before, (False, False, True, False)):
            assert torch.isfinite(p).all()
            if stepped:
                torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=1e-7)
            else:
                assert torch.equal(p.detach(), theta)


def test_complex_parameters_predict_as_pairs_of_reals():
    """torch's Adam updates a complex tensor as (re, im) pairs; the prediction must read its state the same way."""
    torch.manual_seed(0)
    z = nn.Parameter(torch.randn(6, dtype=torch.complex128))
    twin = nn.Parameter(torch.view_as_real(z.detach()).clone())
    for factory in (lambda p: torch.optim.Adam(p, lr=0.1, amsgrad=True), lambda p: AdaBelief(p, lr=0.1),
                    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)):  # fmt: skip
        z.data, twin.data = z.detach().clone(), torch.view_as_real(z.detach()).clone()
        ours, theirs = factory([z]), factory([twin])
        for _ in range(3):
            z.grad = torch.randn(6, dtype=torch.complex128)
            twin.grad = torch.view_as_real(z.grad).clone()
            ours.step()
            theirs.step()
        with WeightPredictor(ours), WeightPredictor(theirs):
            torch.testing.assert_close(torch.view_as_real(z.detach()), twin.detach(), rtol=1e-13, atol=1e-14)


def test_first_prediction_under_inference_mode_then_training():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    predictor = WeightPredictor(optimizer)
    with torch.inference_mode(), predictor:  # e.g. evaluating at the predicted weights first
        model(torch.randn(3, 4))
    optimizer.zero_grad()
    with predictor:
        model(torch.randn(3, 4)).sum().backward()
    optimizer.step()


def test_adamw_group_without_decoupled_key_still_decays():
    """AdamW groups of older torch versions have no decoupled_weight_decay key; AdamW is decoupled regardless."""
    params = make_params()
    optimizer = torch.optim.AdamW(params, lr=0.1, weight_decay=0.5)
    random_steps(optimizer, params)
    with WeightPredictor(optimizer, include_weight_decay=True):
        with_key = [p.detach().clone() for p in params]
    del optimizer.param_groups[0]["decoupled_weight_decay"]
    with WeightPredictor(optimizer, include_weight_decay=True):
        for p, want in zip(params, with_key):
            assert torch.equal(p.detach(), want)


def test_float16_adam_with_small_eps_stays_finite():
    """In float16, eps * sqrt(1 - beta2^t) rounds to zero: rows without gradient must not become 0 / 0."""
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(6, 3).half())
    optimizer = torch.optim.Adam([p], lr=1e-3, eps=1e-7)
    p.grad = torch.zeros_like(p)
    p.grad[:2] = torch.randn(2, 3).half()
    optimizer.step()
    assert torch.isfinite(p).all()
    expected = reference_prediction(optimizer, p, 1.0, False)
    with WeightPredictor(optimizer):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p.detach().double(), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("cls", [AdaBelief, AdaM3])
def test_amsgrad_switched_on_mid_run_predicts_from_second_moment(cls):
    """Our optimizers create the running maximum lazily; until their next step, the prediction uses v."""
    params = make_params()
    optimizer = cls(params, lr=1e-2)
    random_steps(optimizer, params)
    expected = [reference_prediction(optimizer, p, 1.0, False) for p in params]  # amsgrad still off
    optimizer.param_groups[0]["amsgrad"] = True
    with WeightPredictor(optimizer):
        for p, want in zip(params, expected):
            torch.testing.assert_close(p.detach(), want, rtol=1e-13, atol=1e-14)
    random_steps(optimizer, params, n=1)  # the optimizer copes too


def test_loading_steps_zero_frees_the_buffers():
    params = make_params()
    optimizer = torch.optim.Adam(params)
    random_steps(optimizer, params)
    predictor = WeightPredictor(optimizer)
    with predictor:
        pass
    assert predictor.buffer_bytes > 0
    predictor.load_state_dict({"steps": 0, "include_weight_decay": False})
    assert predictor.buffer_bytes == 0


def test_every_optimizer_converges_with_and_without_prediction():
    from xgrad.optim import create_optimizer

    torch.manual_seed(0)
    n = 10
    eig = torch.logspace(0, 2, n, dtype=torch.float64)  # condition number 100
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    a = q @ torch.diag(eig) @ q.T
    start = torch.randn(n, dtype=torch.float64)
    settings = {
        "sgd": {"lr": 0.005},
        "sgdm": {"lr": 0.002, "momentum": 0.9},
        "adam": {"lr": 0.05},
        "adamw": {"lr": 0.05, "weight_decay": 0.0},
        "adabelief": {"lr": 0.05},
        "adam3": {"lr": 0.05},
    }
    for name, hp in settings.items():
        for steps in (None, 1.0):
            if name == "sgd" and steps is not None:
                continue
            theta = nn.Parameter(start.clone())
            optimizer = create_optimizer(name, [theta], **hp)
            predictor = WeightPredictor(optimizer, steps=steps) if steps else None
            loss0 = float(0.5 * start @ a @ start)
            for _ in range(300):
                optimizer.zero_grad(set_to_none=True)
                if predictor is not None:
                    predictor.predict()
                (0.5 * theta @ a @ theta).backward()
                if predictor is not None:
                    predictor.restore()
                optimizer.step()
            loss = float(0.5 * theta.detach() @ a @ theta.detach())
            assert math.isfinite(loss) and loss < 1e-3 * loss0, (name, steps, loss, loss0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["foreach", "fused", "capturable"])
def test_cuda_adam_predictions_match_reference(kind):
    params = [nn.Parameter(p.detach().cuda()) for p in make_params(torch.float32)]
    kwargs = {"foreach": {"foreach": True}, "fused": {"fused": True}, "capturable": {"capturable": True}}[kind]
    optimizer = torch.optim.AdamW(params, lr=1e-2, **kwargs)
    random_steps(optimizer, params)
    expected = [reference_prediction(optimizer, p, 1.0, False) for p in params]
    with WeightPredictor(optimizer):
        for p, want in zip(params, expected):
            torch.testing.assert_close(p.detach().double(), want, rtol=1e-5, atol=1e-6)


@cuda
@pytest.mark.cuda
def test_cuda_sgd_and_channels_last():
    model = nn.Conv2d(3, 8, 3).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=True)
    random_steps(optimizer, list(model.parameters()))
    expected = [reference_prediction(optimizer, p, 1.0, False) for p in model.parameters()]
    with WeightPredictor(optimizer):
        assert model.weight.is_contiguous(memory_format=torch.channels_last)
        for p, want in zip(model.parameters(), expected):
            torch.testing.assert_close(p.detach().double(), want, rtol=1e-5, atol=1e-6)


def test_channels_last_and_non_dense_parameters():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    odd = nn.Parameter(torch.randn(5, 3).t())  # a transposed view: strides (1, 3)
    params = [conv.weight, conv.bias, odd]
    optimizer = torch.optim.Adam(params, lr=0.1)
    random_steps(optimizer, params)
    expected = [reference_prediction(optimizer, p, 1.0, False) for p in params]
    before = [p.detach().clone() for p in params]
    strides = [p.stride() for p in params]
    with WeightPredictor(optimizer):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        for p, want in zip(params, expected):
            torch.testing.assert_close(p.detach().double(), want, rtol=1e-6, atol=1e-6)
        conv(torch.randn(1, 3, 5, 5)).sum().backward()
    assert [p.stride() for p in params] == strides
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))


def test_compiled_prediction_matches_reference_without_recompiling():
    """compile=True: one fused kernel per batch, no fallback, and a new lr or step count reuses the graph."""
    import warnings

    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    settings = [lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), lambda p: AdaM3(p, lr=1e-2, amsgrad=True)]
    for factory in settings:
        params = make_params(torch.float32)
        optimizer = factory(params)
        predictor = WeightPredictor(optimizer, steps=1.5, include_weight_decay=True, compile=True)
        for lr in (1e-2, 3e-3, 1e-3):
            optimizer.param_groups[0]["lr"] = lr
            random_steps(optimizer, params, n=2)
            expected = [reference_prediction(optimizer, p, 1.5, True) for p in params]
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a fallback to the eager kernels would warn
                with predictor:
                    for p, want in zip(params, expected):
                        torch.testing.assert_close(p.detach().double(), want, rtol=1e-5, atol=1e-6)
        (cache,) = predictor._caches.values()
        assert "kernel" in cache and not cache.get("fused_failed")
    assert counters["stats"]["unique_graphs"] == len(settings)  # one graph each, whatever the lr


# ----------------------------------------------------------------------------------- storage mirroring


def pack_into_one_storage(params: list[nn.Parameter], lead: int = 0, transpose_first: bool = False) -> torch.Tensor:
    """Make ``params`` views of one flat tensor, one after another from element ``lead`` (as cuDNN's
    ``flatten_parameters`` does, or any model that packs its parameters); the first one optionally transposed."""
    flat = torch.zeros(lead + sum(p.numel() for p in params), dtype=params[0].dtype)
    offset = lead
    for i, p in enumerate(params):
        chunk = flat[offset : offset + p.numel()]
        view = chunk.view(p.shape[::-1]).t() if (transpose_first and i == 0) else chunk.view(p.shape)
        view.copy_(p.detach())
        p.data = view
        offset += p.numel()
    return flat


def storage_of(p: torch.Tensor) -> int:
    return p.untyped_storage().data_ptr()


@pytest.mark.parametrize("two_groups", [False, True], ids=["one-group", "weights-and-biases-apart"])
@pytest.mark.parametrize(
    "factory",
    [lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9), lambda g: torch.optim.AdamW(g, lr=0.1, weight_decay=0.1)],
    ids=["sgdm", "adamw"],
)
def test_parameters_sharing_a_storage_get_predictions_sharing_one_storage(factory, two_groups):
    """Parameters packed into one storage are predicted into one spare storage at their own offsets and strides."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    packed = list(model.parameters())
    pack_into_one_storage(packed, lead=3, transpose_first=True)
    alone = nn.Parameter(torch.randn(4, dtype=torch.float64))  # a parameter with its own storage
    weights, biases = [p for p in packed if p.dim() == 2], [p for p in packed if p.dim() == 1]
    groups = [{"params": [alone, *weights]}, {"params": biases, "lr": 0.03}]
    if not two_groups:
        groups = [{"params": [alone, *packed]}]
    optimizer = factory(groups)
    random_steps(optimizer, [alone, *packed])
    layouts = [(storage_of(p), p.storage_offset(), p.stride()) for p in packed]
    assert len({storage for storage, _, _ in layouts}) == 1 and packed[0].stride() == (1, 7)
    before = [p.detach().clone() for p in [alone, *packed]]
    expected = [reference_prediction(optimizer, p, 1.0, False) for p in [alone, *packed]]
    predictor = WeightPredictor(optimizer)
    for _ in range(2):  # the spare storage is reused
        with predictor:
            spare = storage_of(packed[0])
            assert spare != layouts[0][0]
            assert [(storage_of(p), p.storage_offset(), p.stride()) for p in packed] == [
                (spare, offset, stride) for _, offset, stride in layouts
            ]
            assert storage_of(alone) not in (spare, layouts[0][0])
            for p, want in zip([alone, *packed], expected):
                torch.testing.assert_close(p.detach(), want, rtol=1e-13, atol=1e-14)
        assert [(storage_of(p), p.storage_offset(), p.stride()) for p in packed] == layouts
        assert all(torch.equal(p.detach(), b) for p, b in zip([alone, *packed], before))
    param_bytes = sum(p.numel() * 8 for p in [alone, *packed])
    assert predictor.buffer_bytes <= param_bytes + 64 + 3 * 8  # one copy: alignment of `alone`, the lead gap


def cudnn_takes_weights_in_place(rnn: nn.LSTM, offsets: list[int]) -> bool:
    """CPU stand-in for ATen's cuDNN check (``try_get_weight_buf`` in aten/src/ATen/native/cudnn/RNN.cpp): it
    views the storage of the first weight from its start as the weight buffer and uses the weights in place only
    if each weight starts where cuDNN's layout puts it (here: ``offsets``, the layout the weights were flattened
    into) and the last weight is contiguous; otherwise it copies them all and warns "RNN module weights are not
    part of single contiguous chunk of memory". ``flatten_parameters`` also requires distinct data pointers."""
    weights = rnn._flat_weights
    buffer = torch.empty(0, dtype=weights[0].dtype).set_(weights[0].untyped_storage())
    if buffer.numel() < sum(w.numel() for w in weights) or len({w.data_ptr() for w in weights}) != len(weights):
        return False
    starts = [buffer.data_ptr() + offset * buffer.element_size() for offset in offsets]
    return [w.data_ptr() for w in weights] == starts and weights[-1].is_contiguous()


def test_predicted_lstm_stays_one_chunk_in_cudnn_order():
    """The language model's LSTM weights, flattened into one buffer in cuDNN's order (emulated on CPU), stay one
    chunk in that order under prediction, so cuDNN runs the predicted weights in place instead of re-packing."""
    from xgrad.models.lstm import LSTMLanguageModel

    torch.manual_seed(0)
    model = LSTMLanguageModel(vocab_size=11, embedding_size=4, hidden_size=5, num_layers=2)
    pack_into_one_storage(model.rnn._flat_weights)
    offsets = [w.storage_offset() for w in model.rnn._flat_weights]
    assert cudnn_takes_weights_in_place(model.rnn, offsets)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    predictor = WeightPredictor(optimizer)
    tokens = torch.randint(0, 11, (6, 3))
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        with predictor:
            assert cudnn_takes_weights_in_place(model.rnn, offsets)
            logits, _ = model(tokens[:-1])
            nn.functional.cross_entropy(logits.flatten(0, 1), tokens[1:].flatten()).backward()
        optimizer.step()
        assert cudnn_takes_weights_in_place(model.rnn, offsets)
    expected = [reference_prediction(optimizer, w, 1.0, False) for w in model.rnn._flat_weights]
    with predictor:
        assert cudnn_takes_weights_in_place(model.rnn, offsets)
        for w, want in zip(model.rnn._flat_weights, expected):
            torch.testing.assert_close(w.detach().double(), want, rtol=1e-6, atol=1e-7)


def test_packing_the_parameters_later_switches_to_a_mirrored_spare():
    """The plan of spares is reused while the layout stays; packing the weights mid-run (as flatten_parameters does
    after .to(device)) is noticed, and so is unpacking them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3)).double()
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=0.1)
    predictor = WeightPredictor(optimizer)
    random_steps(optimizer, params)
    with predictor:
        pass
    assert [key[0] for key in predictor._buffers] == ["packed"]
    pack_into_one_storage(params, lead=2)
    offsets = [p.storage_offset() for p in params]
    expected = [reference_prediction(optimizer, p, 1.0, False) for p in params]
    with predictor:
        assert len({storage_of(p) for p in params}) == 1 and [p.storage_offset() for p in params] == offsets
        for p, want in zip(params, expected):
            torch.testing.assert_close(p.detach(), want, rtol=1e-13, atol=1e-14)
    assert [key[0] for key in predictor._buffers] == ["mirrored"]
    for p in params:  # each its own storage again
        p.data = p.detach().clone()
    with predictor:
        pass
    assert [key[0] for key in predictor._buffers] == ["packed"]
