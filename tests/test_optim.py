"""AdaBelief against the official package, AdaM3 against its equations, and the optimizer factory."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xgrad.optim import OPTIMIZERS, AdaBelief, AdaM3, create_optimizer


def _params(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in [(6, 4), (4,), (2, 3, 3)]]


def _grads(params, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params] for _ in range(n)]


def _step_both(a, optimizer_a, b, optimizer_b, n):
    """Step two optimizers ``n`` times with the same random gradients."""
    for grads in _grads(a, n):
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        optimizer_a.step()
        optimizer_b.step()


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("decoupled", [False, True])
def test_adabelief_matches_official_package(decoupled, amsgrad, foreach):
    adabelief_pytorch = pytest.importorskip("adabelief_pytorch")  # a dev dependency; skip only this test
    ours_p, ref_p = _params(), _params()
    hp = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-12, weight_decay=0.05, amsgrad=amsgrad)
    ours = AdaBelief(ours_p, decoupled_weight_decay=decoupled, foreach=foreach, **hp)
    ref = adabelief_pytorch.AdaBelief(
        ref_p, weight_decouple=decoupled, fixed_decay=False, rectify=False, print_change_log=False, **hp
    )
    for grads in _grads(ours_p, 8):
        for p, q, g in zip(ours_p, ref_p, grads):
            p.grad, q.grad = g.clone(), g.clone()  # the package adds L2 decay into .grad in place
        ours.step()
        ref.step()
        for p, q in zip(ours_p, ref_p):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-13, atol=1e-15)
    for p, q in zip(ours_p, ref_p):
        key = "max_exp_avg_var" if amsgrad else "exp_avg_var"
        ours_key = "max_exp_avg_sq" if amsgrad else "exp_avg_sq"
        torch.testing.assert_close(ours.state[p][ours_key], ref.state[q][key], rtol=1e-13, atol=1e-20)


def adam3_reference(params, grad_steps, lr, betas, eps, weight_decay, decoupled, amsgrad):
    """AdaM3 from its published equations, per element in Python floats."""
    beta1, beta2 = betas
    out = []
    for p0, grads in zip(params, zip(*grad_steps)):
        theta = p0.detach().flatten().tolist()
        m = [0.0] * len(theta)
        v = [0.0] * len(theta)
        vmax = [0.0] * len(theta)
        for t, g in enumerate(grads, start=1):
            g = g.flatten().tolist()
            for i in range(len(theta)):
                gi = g[i] + (0.0 if decoupled else weight_decay * theta[i])
                if decoupled:
                    theta[i] *= 1 - lr * weight_decay
                m[i] = beta1 * m[i] + (1 - beta1) * gi
                v[i] = beta2 * v[i] + (1 - beta2) * m[i] ** 2 + eps
                vmax[i] = max(vmax[i], v[i])
                v_used = vmax[i] if amsgrad else v[i]
                m_hat = m[i] / (1 - beta1**t)
                v_hat = v_used / (1 - beta2**t)
                theta[i] -= lr * m_hat / math.sqrt(v_hat)
        out.append(torch.tensor(theta, dtype=torch.float64).reshape(p0.shape))
    return out


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam3_matches_equations(decoupled, amsgrad, foreach):
    params = _params()
    start = [p.detach().clone() for p in params]
    hp = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
    optimizer = AdaM3(params, amsgrad=amsgrad, decoupled_weight_decay=decoupled, foreach=foreach, **hp)
    grad_steps = _grads(params, 6)
    for grads in grad_steps:
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
    expected = adam3_reference(start, grad_steps, decoupled=decoupled, amsgrad=amsgrad, **hp)
    for p, want in zip(params, expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls", [AdaBelief, AdaM3])
def test_foreach_and_loop_agree_in_float32(cls):
    a, b = _params(dtype=torch.float32), _params(dtype=torch.float32)
    _step_both(a, cls(a, lr=1e-2, foreach=True), b, cls(b, lr=1e-2, foreach=False), n=4)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_constructor_defaults():
    for cls in (AdaBelief, AdaM3):
        group = cls(_params()).param_groups[0]
        assert group["lr"] == 1e-3 and group["betas"] == (0.9, 0.999) and group["eps"] == 1e-16
        assert group["weight_decay"] == 0.0 and not group["decoupled_weight_decay"] and not group["amsgrad"]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_create_optimizer_builds_every_name(name):
    optimizer = create_optimizer(name, _params(), lr=0.01)
    expected = {"sgd": torch.optim.SGD, "sgdm": torch.optim.SGD, "adam": torch.optim.Adam,
                "adamw": torch.optim.AdamW, "adabelief": AdaBelief, "adam3": AdaM3}[name]  # fmt: skip
    assert type(optimizer) is expected
    assert optimizer.param_groups[0]["lr"] == 0.01
    if name == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0
    if name == "sgdm":
        assert 0 < optimizer.param_groups[0]["momentum"] < 1


@pytest.mark.parametrize(
    ("name", "hp", "message"),
    [
        ("adam", {"lr": -1.0}, r"lr=-1.0.*lr >= 0"),
        ("adamw", {"betas": [0.9, 1.0]}, r"betas\[1\]=1.0.*0 <= beta < 1"),
        ("adabelief", {"betas": (0.9,)}, r"betas=\(0.9,\)"),
        ("adam3", {"eps": 0.0}, r"eps=0.0.*eps > 0"),
        ("sgdm", {"weight_decay": -0.1}, r"weight_decay=-0.1.*>= 0"),
        ("sgdm", {"momentum": 0.0}, r"momentum=0.0.*0 < momentum < 1"),
        ("sgdm", {"momentum": 1.0}, r"momentum=1.0"),
        ("sgd", {"momentum": 0.9}, r"momentum=0.9.*sgdm"),
        ("adam", {"momentum": 0.9}, r"unknown hyperparameter 'momentum'.*accepted"),
        ("adam", {"lr": "fast"}, r"lr='fast'"),
    ],
)
def test_create_optimizer_rejects_bad_values(name, hp, message):
    with pytest.raises(ValueError, match=message):
        create_optimizer(name, _params(), **hp)


def test_unknown_optimizer_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown optimizer 'lamb'.*adabelief.*adam3.*sgdm"):
        create_optimizer("lamb", _params())


def test_direct_constructor_validates():
    with pytest.raises(ValueError, match="eps"):
        AdaBelief(_params(), eps=-1)
    with pytest.raises(ValueError, match="betas"):
        AdaM3(_params(), betas=(1.5, 0.9))


@pytest.mark.parametrize("cls", [AdaBelief, AdaM3])
def test_tensor_lr_and_betas_match_floats(cls):
    """torch's Adam accepts tensor lr and betas (e.g. for capturable schedules); ours do too."""
    floats, tensors = _params(), _params()
    a = cls(floats, lr=0.01, betas=(0.8, 0.99))
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731 (float64: the same numbers as the floats)
    b = cls(tensors, lr=t(0.01), betas=(t(0.8), t(0.99)))
    _step_both(floats, a, tensors, b, n=3)
    for p, q in zip(floats, tensors):
        assert torch.equal(p, q)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("cls", [AdaBelief, AdaM3])
def test_complex_parameters_update_as_pairs_of_reals(cls, foreach):
    """As torch's Adam: a complex tensor is optimized as its (re, im) view, so |g|^2 is per component."""
    torch.manual_seed(0)
    z = nn.Parameter(torch.randn(5, dtype=torch.complex128))
    twin = nn.Parameter(torch.view_as_real(z.detach()).clone())
    ours = cls([z], lr=0.1, weight_decay=0.1, amsgrad=True, foreach=foreach)
    reference = cls([twin], lr=0.1, weight_decay=0.1, amsgrad=True, foreach=foreach)
    for _ in range(3):
        z.grad = torch.randn(5, dtype=torch.complex128)
        twin.grad = torch.view_as_real(z.grad).clone()
        ours.step()
        reference.step()
    torch.testing.assert_close(torch.view_as_real(z.detach()), twin.detach(), rtol=0, atol=0)
