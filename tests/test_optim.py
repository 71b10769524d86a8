"""AdaBelief against the official package, AdaM3 against its equations, and the optimizer factory."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from xgrad.optim import OPTIMIZERS, AdaBelief, AdaM3, MuonWithAdamW, create_optimizer, muon_param_groups


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


EXPECTED_CLASSES = {
    "sgd": "torch.optim.sgd.SGD", "sgdm": "torch.optim.sgd.SGD", "adam": "torch.optim.adam.Adam",
    "adamw": "torch.optim.adamw.AdamW", "adabelief": "xgrad.optim.adabelief.AdaBelief",
    "adam3": "xgrad.optim.adam3.AdaM3", "nadam": "torch.optim.nadam.NAdam", "radam": "torch.optim.radam.RAdam",
    "adamax": "torch.optim.adamax.Adamax", "rmsprop": "torch.optim.rmsprop.RMSprop",
    "adagrad": "torch.optim.adagrad.Adagrad", "adafactor": "torch.optim.Adafactor",
    "muon": "xgrad.optim.muon.MuonWithAdamW", "lion": "pytorch_optimizer.optimizer.lion.Lion",
    "soap": "pytorch_optimizer.optimizer.soap.SOAP", "adan": "pytorch_optimizer.optimizer.adan.Adan",
}  # fmt: skip


def test_registry_lists_every_expected_optimizer():
    assert list(OPTIMIZERS) == list(EXPECTED_CLASSES)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_create_optimizer_builds_every_name(name):
    if OPTIMIZERS[name].extra:
        pytest.importorskip("pytorch_optimizer")
    optimizer = create_optimizer(name, _params(), lr=0.01)
    cls = type(optimizer)
    assert f"{cls.__module__}.{cls.__qualname__}" == EXPECTED_CLASSES[name]
    assert optimizer.param_groups[0]["lr"] == 0.01
    if name == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0
    if name == "sgdm":
        assert 0 < optimizer.param_groups[0]["momentum"] < 1


@pytest.mark.parametrize(
    ("name", "hp", "message"),
    [
        ("adam", {"lr": -1.0}, r"invalid lr=-1.0: accepted a finite number > 0$"),
        ("adam", {"lr": 0.0}, r"invalid lr=0.0: accepted a finite number > 0$"),
        ("adam", {"lr": float("inf")}, r"invalid lr=inf: accepted a finite number > 0$"),
        ("adamw", {"betas": [0.9, 1.0]}, r"invalid betas\[1\]=1.0: accepted a finite number >= 0 and < 1$"),
        ("adabelief", {"betas": (0.9,)}, r"betas=\(0.9,\)"),
        ("adam3", {"eps": 0.0}, r"eps=0.0: accepted a finite number > 0"),
        ("sgdm", {"weight_decay": -0.1}, r"weight_decay=-0.1.*>= 0"),
        ("sgdm", {"momentum": 0.0}, r"momentum=0.0: accepted a finite number > 0 and < 1$"),
        ("sgdm", {"momentum": 1.0}, r"momentum=1.0"),
        ("sgd", {"momentum": 0.9}, r"momentum=0.9.*sgdm"),
        ("adam", {"momentum": 0.9}, r"unknown key momentum=0.9: the keys of optimizer 'adam' are amsgrad, .*, weight_"),
        ("adam", {"lr": "fast"}, r"lr='fast'"),
        ("adan", {"betas": [0.9, 0.9]}, r"betas=\[0.9, 0.9\]: accepted a list of 3 elements"),
        ("muon", {"ns_steps": 2.5}, r"ns_steps=2.5: accepted an integer >= 1$"),
        ("muon", {"adjust_lr_fn": "cubic"}, r"adjust_lr_fn='cubic': accepted null or one of original, match_rms_adamw"),
        ("adafactor", {"eps": [None, -1.0]}, r"eps\[1\]=-1.0: accepted null or a finite number >= 0$"),
        ("rmsprop", {"centered": "yes"}, r"centered='yes': accepted true or false"),
        ("lion", {"eps": 1e-8}, r"unknown key eps=1e-08: the keys of optimizer 'lion' are betas, lr, weight_decay$"),
    ],
)
def test_create_optimizer_rejects_bad_values(name, hp, message):
    with pytest.raises(ValueError, match=message):
        create_optimizer(name, _params(), **hp)


def test_registry_declares_keys_with_hparams_and_imports_no_hydra():
    """The registry speaks xgrad.hparams (one way to declare a key), and the method layer stays free of Hydra."""
    from xgrad.hparams import Default, Param

    for spec in OPTIMIZERS.values():
        assert all(isinstance(d, Default) and isinstance(d.param, Param) for d in spec.hyperparameters.values())
        assert all(d.param.error("k", d.value) is None for d in spec.hyperparameters.values())  # defaults accepted
    code = "import sys, xgrad.optim; print(sorted({m.split('.')[0] for m in sys.modules} & {'hydra', 'omegaconf'}))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_unknown_optimizer_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown optimizer 'lamb': known optimizers are sgd, sgdm, adam, .*, adan$"):
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


# ----------------------------------------------------------------------------------- the optimizers people use now

NEW = ["nadam", "radam", "adamax", "rmsprop", "adagrad", "adafactor", "muon", "lion", "soap", "adan"]
# Where the registry's (paper's / official code's) defaults differ from the class's own signature defaults.
DIFFERS_FROM_CLASS = {
    "rmsprop": {"lr", "alpha"},  # Tieleman & Hinton's 0.001 and 0.9 against torch's 0.01 and 0.99
    "muon": {"weight_decay", "adamw_weight_decay"},  # the Muon README's usage (0.01) against muon.py's 0
}


def _class_of(name):
    import importlib

    build = OPTIMIZERS[name].build
    if isinstance(build, type):
        return build
    module, attribute = build.__qualname__.rsplit(".", 1)
    return getattr(importlib.import_module(module), attribute)


@pytest.mark.parametrize("name", NEW)
def test_registry_defaults_are_the_class_defaults_where_they_coincide(name):
    if OPTIMIZERS[name].extra:
        pytest.importorskip("pytorch_optimizer")
    signature = inspect.signature(_class_of(name).__init__).parameters
    differs = set()
    for key, value in OPTIMIZERS[name].defaults.items():
        assert key in signature, f"{name}: {key} is not a parameter of the class"
        if signature[key].default != value:
            differs.add(key)
    assert differs == DIFFERS_FROM_CLASS.get(name, set())


@pytest.mark.parametrize("name", NEW)
def test_config_file_repeats_the_registry_defaults_and_builds(name):
    from omegaconf import OmegaConf

    from tests.conftest import make_cfg
    from xgrad.tasks import config_kwargs

    if OPTIMIZERS[name].extra:
        pytest.importorskip("pytorch_optimizer")
    node = make_cfg([f"optimizer={name}"]).optimizer
    values = OmegaConf.to_container(node, resolve=True)
    assert values.pop("name") == name
    as_lists = {k: list(v) if isinstance(v, tuple) else v for k, v in OPTIMIZERS[name].defaults.items()}
    assert values == as_lists
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    optimizer = create_optimizer(name, model, foreach=True, **config_kwargs(node))
    groups = optimizer.param_groups
    if name == "muon":
        assert [g["use_muon"] for g in groups] == [True, False]
        assert groups[0]["lr"] == 0.02 and groups[0]["momentum"] == 0.95 and groups[0]["weight_decay"] == 0.01
        assert (groups[1]["lr"], groups[1]["betas"], groups[1]["eps"]) == (3e-4, (0.9, 0.95), 1e-10)
        return
    for key, value in OPTIMIZERS[name].defaults.items():
        assert groups[0][key] == value, key


def test_prediction_entry_agrees_with_the_registered_rules():
    from xgrad.predict import _RULES

    for name, spec in OPTIMIZERS.items():
        if spec.extra and importlib.util.find_spec("pytorch_optimizer") is None:
            continue
        has_rule = any(cls in _RULES for cls in _class_of(name).__mro__)
        assert (spec.prediction == "rule") == (has_rule and name != "sgd"), name
        assert (spec.prediction == "none") == (name == "sgd"), name


def test_missing_optional_package_names_the_extra(without_extra_optim):
    import xgrad.optim.factory as factory

    for name in ("lion", "soap", "adan"):
        with pytest.raises(factory.MissingExtraError, match=r"pip install 'xgrad\[extra-optim\]'"):
            create_optimizer(name, _params())


# ----------------------------------------------------------------------------------- Muon with AdamW


def _muon_hp():
    return dict(lr=0.05, momentum=0.9, weight_decay=0.1, adamw_lr=0.01, adamw_betas=(0.8, 0.9), adamw_eps=1e-6,
                adamw_weight_decay=0.2)  # fmt: skip


def test_muon_is_torch_muon_on_matrices_and_adamw_on_the_rest():
    torch.manual_seed(0)
    w, b = nn.Parameter(torch.randn(6, 4)), nn.Parameter(torch.randn(6))
    w2, b2 = nn.Parameter(w.detach().clone()), nn.Parameter(b.detach().clone())
    ours = MuonWithAdamW([{"params": [w], "use_muon": True}, {"params": [b], "use_muon": False}], **_muon_hp())
    muon = torch.optim.Muon([w2], lr=0.05, momentum=0.9, weight_decay=0.1)
    adamw = torch.optim.AdamW([b2], lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.2)
    for _ in range(4):
        gw, gb = torch.randn(6, 4), torch.randn(6)
        w.grad, b.grad, w2.grad, b2.grad = gw, gb, gw.clone(), gb.clone()
        ours.step()
        muon.step()
        adamw.step()
        assert torch.equal(w, w2) and torch.equal(b, b2)


@pytest.mark.parametrize("channels_last", [False, True])
def test_muon_treats_conv_filters_as_matrices(channels_last):
    torch.manual_seed(0)
    conv = torch.randn(4, 2, 3, 3)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
    c = nn.Parameter(conv)
    m = nn.Parameter(conv.reshape(4, -1).clone())
    ours = MuonWithAdamW([c], lr=0.05, weight_decay=0.1)
    reference = torch.optim.Muon([m], lr=0.05, weight_decay=0.1)
    for _ in range(3):
        g = torch.randn(4, 2, 3, 3)
        c.grad, m.grad = g.to(memory_format=torch.channels_last) if channels_last else g, g.reshape(4, -1).clone()
        ours.step()
        reference.step()
        assert torch.equal(c.detach().reshape(4, -1), m.detach())
    assert c.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_muon_parameter_split_follows_the_muon_readme():
    from xgrad.models.lstm import LSTMLanguageModel
    from xgrad.models.resnet_cifar import resnet20

    model = resnet20(num_classes=10)
    muon, adamw = (g["params"] for g in muon_param_groups(model))
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in adamw if p.ndim >= 2} == {"conv1.weight", "linear.weight"}
    assert all(p.ndim == 4 for p in muon) and len(muon) == 18
    lm = LSTMLanguageModel(vocab_size=50, embedding_size=8, hidden_size=8, num_layers=2, tie_weights=False)
    muon, adamw = (g["params"] for g in muon_param_groups(lm))
    names = {id(p): n for n, p in lm.named_parameters()}
    assert {names[id(p)] for p in adamw if p.ndim >= 2} == {"embedding.weight", "decoder.weight"}
    assert {names[id(p)] for p in muon} == {f"rnn.weight_{k}_l{i}" for k in ("ih", "hh") for i in (0, 1)}


def test_muon_resumes_from_its_state_dict_bit_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 1))
    data = [torch.randn(8, 3) for _ in range(6)]

    def train(model, optimizer, batches):
        for x in batches:
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()

    whole = copy.deepcopy(model)
    train(whole, create_optimizer("muon", whole), data)
    first = create_optimizer("muon", model)
    train(model, first, data[:3])
    resumed = copy.deepcopy(model)
    second = create_optimizer("muon", resumed)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    train(resumed, second, data[3:])
    for p, q in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("include_weight_decay", [False, True])
def test_muon_is_predicted_by_extrapolating_both_kinds_of_groups(include_weight_decay):
    """The predictor sees one optimizer: theta_t + s * (theta_t - theta_{t-1}) in every group, with the declared
    decoupled decay (Muon's and AdamW's) taken out of the repeated update unless it is included."""
    from xgrad import WeightPredictor

    torch.manual_seed(0)
    w, b = nn.Parameter(torch.randn(6, 4, dtype=torch.float64)), nn.Parameter(torch.randn(6, dtype=torch.float64))
    optimizer = MuonWithAdamW([{"params": [w], "use_muon": True}, {"params": [b], "use_muon": False}], **_muon_hp())
    predictor = WeightPredictor(optimizer, steps=2.0, include_weight_decay=include_weight_decay)
    assert predictor.method == "extrapolate"
    for _ in range(3):
        before = [w.detach().clone(), b.detach().clone()]
        w.grad, b.grad = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
        optimizer.step()
    with predictor:
        predicted = [w.detach().clone(), b.detach().clone()]
    for p, previous, theta, group in zip(predicted, before, (w, b), optimizer.param_groups):
        theta = theta.detach()
        move = theta - previous
        decay = group["lr"] * group["weight_decay"]
        expected = theta + 2.0 * (move + decay * previous)  # the update without its decay, twice
        if include_weight_decay:
            expected -= 2.0 * decay * theta  # and the decay at the next lr, applied to theta_t
        torch.testing.assert_close(p, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["adafactor", "lion"])
def test_undeclared_decoupled_decay_is_declared_for_the_predictor(name):
    """Adafactor and Lion decay theta *= 1 - lr * wd before their update: extrapolation leaves the decay out of the
    repeated update (as for AdamW) instead of repeating it."""
    from xgrad import WeightPredictor

    if OPTIMIZERS[name].extra:
        pytest.importorskip("pytorch_optimizer")
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    optimizer = create_optimizer(name, [w], lr=0.01, weight_decay=0.5)
    assert optimizer.param_groups[0]["decoupled_weight_decay"] is True
    predictor = WeightPredictor(optimizer, steps=1.0)
    for _ in range(3):
        previous = w.detach().clone()
        w.grad = torch.randn(5, 3, dtype=torch.float64)
        optimizer.step()
    with predictor:
        predicted = w.detach().clone()
    theta = w.detach()
    torch.testing.assert_close(predicted, theta + (theta - previous) + 0.01 * 0.5 * previous, rtol=1e-12, atol=1e-12)
