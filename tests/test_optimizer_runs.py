"""Every optimizer in the registry trains with prediction in the suite; the predict_method key."""

from __future__ import annotations

import importlib.util
import math

import pytest

from tests.conftest import TINY, make_cfg
from xgrad.errors import ConfigError
from xgrad.optim import OPTIMIZERS
from xgrad.rundir import read_metrics
from xgrad.trainer import train

NEW = ["nadam", "radam", "adamax", "rmsprop", "adagrad", "adafactor", "muon", "lion", "soap", "adan"]


@pytest.mark.parametrize("name", NEW)
def test_each_new_optimizer_trains_with_prediction(name, tmp_path):
    """The tiny stand-in for `python -m xgrad.run experiment=cpu_demo optimizer=NAME predict=true`."""
    if OPTIMIZERS[name].extra:
        pytest.importorskip("pytorch_optimizer")
    result = train(make_cfg([*TINY, f"optimizer={name}", "predict=true"]), tmp_path)
    assert result.status == "completed"
    assert result.summary["predict"] and result.summary["predict_method"] == "extrapolate"
    rows = read_metrics(tmp_path)
    assert all(math.isfinite(row["train_loss"]) and math.isfinite(row["prediction_error"]) for row in rows)
    # the default sampling measures once in each 3-step epoch (SOAP's first step leaves the weights alone, so
    # its first prediction is no move and has no cosine)
    assert -1 <= rows[-1]["prediction_cosine"] <= 1


@pytest.mark.parametrize(
    ("optimizer", "method", "resolved"),
    [("sgdm", "auto", "rule"), ("sgdm", "extrapolate", "extrapolate"), ("sgd", "extrapolate", "extrapolate"),
     ("adam", "rule", "rule"), ("nadam", "auto", "extrapolate")],
)  # fmt: skip
def test_predict_method_reaches_the_predictor_and_the_summary(optimizer, method, resolved, tmp_path):
    cfg = make_cfg([*TINY, "epochs=1", f"optimizer={optimizer}", "predict=true", f"predict_method={method}"])
    result = train(cfg, tmp_path)
    assert result.status == "completed" and result.summary["predict_method"] == resolved


def test_without_prediction_the_summary_has_no_method(tmp_path):
    assert train(make_cfg([*TINY, "epochs=1"]), tmp_path).summary["predict_method"] is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["predict_method=guess"], r"invalid predict_method='guess': accepted one of auto, rule, extrapolate"),
        (["optimizer=sgd", "predict=true"], r"optimizer='sgd'.*predict_method=extrapolate"),
        (["optimizer=sgd", "predict=true", "predict_method=rule"], r"optimizer='sgd'"),
        (["optimizer=nadam", "predict=true", "predict_method=rule"], r"predict_method=rule with optimizer='nadam'"),
    ],
)
def test_predict_method_config_errors(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        train(make_cfg([*TINY, *overrides]), tmp_path)


@pytest.mark.parametrize(
    "preset", ["cpu_demo_text", "ptb_awd_lstm_1layer", "ptb_awd_lstm_3layer", "ptb_zaremba_small", "ptb_zaremba_medium"]
)
def test_presets_with_lr_tables_take_every_optimizer(preset):
    """The language presets' lr and eps tables name the paper's optimizers; any other gets its own default."""
    import torch

    from xgrad.optim import create_optimizer
    from xgrad.tasks import config_kwargs

    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 10))
    for name, spec in OPTIMIZERS.items():
        if spec.extra and importlib.util.find_spec("pytorch_optimizer") is None:
            continue
        hp = config_kwargs(make_cfg([f"experiment={preset}", f"optimizer={name}"]).optimizer)
        optimizer = create_optimizer(name, model, **hp)
        if name not in ("sgd", "sgdm", "adam", "adamw", "adabelief", "adam3"):
            assert optimizer.param_groups[0]["lr"] == spec.defaults["lr"]


@pytest.mark.parametrize("preset", ["cpu_ptb_zaremba_small", "ptb_zaremba_medium"])
def test_zaremba_presets_give_adamw_its_decoupled_decay_and_no_other_optimizer_decay(preset):
    """Zaremba's recipe has no weight decay; AdamW without its decoupled decay would be Adam (identical runs)."""
    decays = {name: make_cfg([f"experiment={preset}", f"optimizer={name}"]).optimizer.weight_decay
              for name in ("sgd", "sgdm", "adam", "adamw", "adabelief", "adam3", "nadam")}  # fmt: skip
    assert decays == {"sgd": 0.0, "sgdm": 0.0, "adam": 0.0, "adamw": 1e-2, "adabelief": 0.0, "adam3": 0.0, "nadam": 0.0}
    import torch

    from xgrad.optim import create_optimizer
    from xgrad.tasks import config_kwargs

    hp = config_kwargs(make_cfg([f"experiment={preset}", "optimizer=adamw"]).optimizer)
    adamw = create_optimizer("adamw", torch.nn.Linear(2, 2), **hp)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 1e-2


def test_missing_optional_package_is_a_config_error_naming_the_extra(tmp_path, without_extra_optim):
    with pytest.raises(ConfigError, match=r"optimizer=soap: .*pip install 'xgrad\[extra-optim\]'"):
        train(make_cfg([*TINY, "optimizer=soap"]), tmp_path)
