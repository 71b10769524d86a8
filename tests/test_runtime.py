"""How a run computes (xgrad.tasks.Runtime): precision and loss scaling, recurrent layers outside autocast,
channels_last, host syncs in the step loop, compile and DDP order, determinism and peak memory. CUDA behaviour
is exercised on CPU: CPU autocast runs bf16 and fp16, and the loop's CUDA settings are Runtime fields."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from omegaconf import open_dict
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tests.conftest import TINY, assert_resume_is_exact, make_cfg, train_killed_at
from xgrad.errors import ConfigError
from xgrad.models import MODELS, create_model
from xgrad.rundir import read_summary
from xgrad.tasks import Runtime
from xgrad.trainer import Trainer, train

# Tiny runs of both tasks; LeNet is the fastest image model (and a conv net, so channels_last applies).
IMAGE = [a for a in TINY if not a.startswith("model=")] + ["model=lenet", "optimizer=sgdm", "optimizer.lr=0.05"]
TEXT = [
    "dataset=demo_text", "dataset.n_train=2000", "dataset.n_valid=400", "dataset.n_test=300",
    "dataset.vocab_size=50", "dataset.bptt=10", "model=lstm", "model.embedding_size=16", "model.hidden_size=16",
    "model.num_layers=1", "epochs=2", "batch_size=8", "optimizer=adam", "optimizer.lr=1e-2",
    "optimizer.weight_decay=0", "scheduler=constant", "progress=line",
]  # fmt: skip
TASKS = {"image": IMAGE, "text": TEXT}


@pytest.fixture(autouse=True)
def _restore_torch_switches():
    """Runtime.apply sets process-wide switches; the rest of the suite gets the ones it had."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32, torch.get_num_threads())  # fmt: skip
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1], saved[2]
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[3], saved[4]
    torch.set_num_threads(saved[5])


# ----------------------------------------------------------------------------------- precision


@pytest.mark.parametrize("predict", [False, True], ids=["plain", "predict"])
@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16", "fp16"])
@pytest.mark.parametrize("task", ["image", "text"])
def test_every_precision_trains_and_resumes_exactly(tmp_path, monkeypatch, task, precision, predict):
    overrides = [*TASKS[task], "epochs=3", f"precision={precision}", f"predict={str(predict).lower()}"]
    whole = assert_resume_is_exact(overrides, tmp_path, monkeypatch)
    summary = read_summary(whole)
    assert summary["precision"] == ("fp32" if precision == "auto" else precision)  # auto is fp32 on CPU
    assert summary["channels_last"] is False and summary["deterministic"] is False
    assert summary["rnn_precision"] == ("fp32" if task == "text" else None)
    assert summary["final_train_loss"] == summary["final_train_loss"]  # finite, not NaN
    if precision == "fp16":  # the loss scale and its growth tracker resumed too
        a = torch.load(whole / "checkpoint.pt", weights_only=False)["scaler"]
        b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)["scaler"]
        assert a and a == b


def test_precision_auto_resolves_per_task_and_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    image, text = make_cfg(IMAGE), make_cfg(TEXT)
    assert Runtime.from_config(image, cuda).precision == "bf16"
    assert Runtime.from_config(text, cuda).precision == "fp32"  # the published LSTM numbers are fp32
    assert Runtime.from_config(image, cpu).precision == Runtime.from_config(text, cpu).precision == "fp32"
    assert Runtime.from_config(image, cuda).channels_last and not Runtime.from_config(image, cpu).channels_last
    assert not Runtime.from_config(text, cuda).channels_last
    assert Runtime.from_config(image, cuda).sync_every > 1 == Runtime.from_config(image, cpu).sync_every
    with open_dict(image):  # a configuration written before these keys existed: the defaults
        for key in ("precision", "channels_last", "deterministic"):
            image.pop(key)
    assert Runtime.from_config(image, cuda).describe(nn.Linear(1, 1)) == {
        "precision": "bf16", "channels_last": True, "deterministic": False, "rnn_precision": None}  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert Runtime.from_config(image, cuda).precision == "fp32"  # no native bf16: auto stays fp32
    with pytest.raises(ConfigError, match="precision='bf16'"):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "old GPU")
        Runtime.from_config(make_cfg([*IMAGE, "precision=bf16"]), cuda)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["precision=fp8"], "invalid precision='fp8': accepted one of auto, fp32, bf16, fp16"),
        (["channels_last=yes"], "invalid channels_last='yes': accepted one of auto, true, false"),
        (["channels_last=1"], "invalid channels_last=1"),
        (["deterministic=maybe"], "invalid deterministic='maybe': accepted true or false"),
    ],
)
def test_bad_runtime_keys_are_config_errors(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(make_cfg([*IMAGE, *overrides]), tmp_path)
    assert not (tmp_path / "summary.json").exists()


def test_channels_last_true_for_a_language_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"channels_last=true for dataset demo_text \(task language_model\)"):
        train(make_cfg([*TEXT, "channels_last=true"]), tmp_path)


class _Dtypes(TorchDispatchMode):
    """Floating dtypes of every tensor that the operations run while ``inside`` is set see (below autocast)."""

    def __init__(self) -> None:
        super().__init__()
        self.inside, self.seen = False, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.inside:
            leaves = tree_leaves((args, kwargs))
            self.seen |= {t.dtype for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()}
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("model", ["lstm", "awd_lstm"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_recurrent_layers_compute_in_float32_under_autocast(model, precision):
    """Defect: autocast ran the LSTM in a low precision (CUDA: always half, ATen's AutocastRNN.cpp; CPU: the
    autocast dtype, or an error at fp16), while the run claimed otherwise. Every operation inside the recurrent
    layers must see float32 only, the rnn_precision summary.json states."""
    net = create_model(model, num_classes=30, embedding_size=8, hidden_size=8, num_layers=2).train()
    rnns = [m for m in net.modules() if isinstance(m, nn.RNNBase)]
    runtime = Runtime(torch.device("cpu"), precision=precision)
    assert runtime.describe(net)["rnn_precision"] == "fp32"
    mode = _Dtypes()
    for rnn in rnns:
        rnn.register_forward_pre_hook(lambda *_: setattr(mode, "inside", True))
        rnn.register_forward_hook(lambda *_: setattr(mode, "inside", False))
    tokens = torch.randint(0, 30, (5, 3))
    with mode, runtime.autocast():
        logits, _ = net(tokens)
    assert mode.seen == {torch.float32}
    assert logits.dtype == runtime.amp_dtype  # the decoder does follow the run's precision


def test_every_registered_recurrent_layer_stays_out_of_autocast():
    from xgrad.models.lstm import FP32LSTM

    for name in MODELS:
        net = create_model(name, num_classes=20)
        assert all(isinstance(m, FP32LSTM) for m in net.modules() if isinstance(m, nn.RNNBase)), name


def _one_step_trainer(tmp_path, *overrides) -> Trainer:
    """A Trainer whose epoch is one optimizer step (16 images, batch 16), SGD with momentum."""
    cfg = make_cfg([*IMAGE, "dataset.n_train=16", "precision=fp16", "epochs=1", *overrides])
    return Trainer(cfg, tmp_path)


def test_fp16_overflowing_step_is_skipped_with_prediction(tmp_path):
    trainer = _one_step_trainer(tmp_path, "predict=true")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # fp16 gradients overflow at this scale
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_epoch(0)
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))  # no step taken
    assert not trainer.optimizer.state  # nor any optimizer state, so the next prediction is the identity
    assert trainer.scaler.get_scale() == 2.0**39  # backed off
    assert not trainer.predictor.active


def test_fp16_clips_the_unscaled_gradients(tmp_path):
    """Clipping must see the true gradients: unscale_ first. SGD's first step moves the weights by lr * the
    clipped gradient, so the update's norm is lr * grad_clip exactly when the true norm exceeds the clip."""
    clip, lr = 1e-3, 0.05
    trainer = _one_step_trainer(tmp_path, f"grad_clip={clip}", "optimizer=sgd",
                                f"optimizer.lr={lr}", "optimizer.weight_decay=0")  # fmt: skip
    before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
    trainer.train_epoch(0)
    after = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert trainer.scaler.get_scale() == 2.0**16  # no overflow: the step was taken at the default scale
    assert torch.linalg.vector_norm(after - before).item() == pytest.approx(lr * clip, rel=1e-3)


def test_channels_last_with_prediction(tmp_path, monkeypatch):
    """channels_last=true on CPU: 4-d weights and input batches in channels_last, also the predicted weights."""
    seen = []
    original = nn.Conv2d._conv_forward

    def record(self, x, weight, bias):
        seen.append((x.is_contiguous(memory_format=torch.channels_last),
                     weight.is_contiguous(memory_format=torch.channels_last)))  # fmt: skip
        return original(self, x, weight, bias)

    monkeypatch.setattr(nn.Conv2d, "_conv_forward", record)
    result = train(make_cfg([*IMAGE, "channels_last=true", "predict=true", "optimizer=adamw", "epochs=1"]), tmp_path)
    assert result.status == "completed" and read_summary(tmp_path)["channels_last"] is True
    assert seen and all(x and w for x, w in seen)


# ----------------------------------------------------------------------------------- host syncs


class _HostReads(TorchFunctionMode):
    """Counts what would make the CPU wait for a GPU: tensor-to-host conversions and host data made into tensors."""

    NAMES = frozenset({"item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__",
                       "tensor", "as_tensor", "from_numpy"})  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.NAMES:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _host_reads_per_epoch(tmp_path, overrides, n_steps: int, sync_every: int) -> int:
    trainer = Trainer(make_cfg([*overrides, "epochs=1"]), tmp_path / f"{n_steps}-{sync_every}")
    trainer.runtime = dataclasses.replace(trainer.runtime, sync_every=sync_every)  # the loop's CUDA setting
    assert trainer.task.num_batches() == n_steps
    with _HostReads() as reads:
        trainer.train_epoch(0)
    return reads.count


@pytest.mark.parametrize("task", ["image", "text"])
def test_step_loop_reads_the_host_only_at_sampled_steps(tmp_path, task):
    """Defect: the statistics made a tensor from a Python int on the device at every step (a synchronous copy
    on CUDA). The loop's host reads must grow with the number of samples (one every ``sync_every`` steps), not
    with the number of steps. SGD with momentum: its step and prediction read nothing on the host either."""
    if task == "image":  # 16 images per step
        runs = {n: [*IMAGE, "predict=true", f"dataset.n_train={16 * n}"] for n in (4, 16)}
    else:  # 8 columns x 10-token windows per step (+1 token for the last target)
        runs = {n: [*TEXT, "optimizer=sgdm", "optimizer.lr=1", "predict=true", f"dataset.n_train={80 * n + 8}"]
                for n in (4, 16)}  # fmt: skip
    short, long = (_host_reads_per_epoch(tmp_path, runs[n], n, sync_every=4) for n in (4, 16))
    assert long - short == (16 - 4) // 4  # 3 more samples, each one bool() of the divergence check
    every_step = _host_reads_per_epoch(tmp_path, runs[16], 16, sync_every=1)
    assert every_step - long == 16 - 16 // 4  # the counter does see per-step reads


# ----------------------------------------------------------------------------------- compile and DDP


@pytest.mark.parametrize("task", ["image", "text"])
def test_compiled_run_with_prediction(tmp_path, task):
    """compile=true through the runner: the compiled model trains (and the predictor fuses its kernels)."""
    optimizer = "sgdm" if task == "image" else "adamw"  # AdamW also compiles the prediction kernel
    cfg = make_cfg([*TASKS[task], "compile=true", "predict=true", f"optimizer={optimizer}", "epochs=1"])
    assert train(cfg, tmp_path).status == "completed"
    assert read_summary(tmp_path)["final_train_loss"] < 10


def test_compile_wraps_the_ddp_model(tmp_path, monkeypatch):
    """Defect: the model was compiled first and then wrapped in DDP. PyTorch documents the other order
    (DistributedDataParallel, then torch.compile of it), whose DDPOptimizer splits graphs at bucket boundaries.
    A stand-in process group of 2 ranks and a recording DDP stand in for torchrun."""
    import xgrad.trainer as trainer_module
    from xgrad.distributed import DistributedContext

    class RecordingDDP(nn.Module):
        def __init__(self, module, device_ids=None):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "setup_distributed", lambda device_type: DistributedContext(0, 2, 0))
    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", RecordingDDP)
    trainer = Trainer(make_cfg([*IMAGE, "compile=true", "predict=true"]), tmp_path)
    compiled = trainer.task.model
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(compiled._orig_mod, RecordingDDP) and compiled._orig_mod.module is trainer.model


# ----------------------------------------------------------------------------------- determinism, memory


def test_deterministic_sets_the_switches_and_records_it(tmp_path):
    train(make_cfg([*IMAGE, "deterministic=true", "epochs=1"]), tmp_path / "det")
    assert read_summary(tmp_path / "det")["deterministic"] is True
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    train(make_cfg([*IMAGE, "epochs=1"]), tmp_path / "default")  # the next run in the process: switched back
    assert read_summary(tmp_path / "default")["deterministic"] is False
    assert not torch.are_deterministic_algorithms_enabled()


class _FakeCuda:
    """Stand-ins for the torch.cuda calls Runtime.apply makes, recording them."""

    def __init__(self, monkeypatch):
        self.calls, self.peak = [], 123
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: self.calls.append("reset"))
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.peak)


@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_switches_per_run(monkeypatch, deterministic):
    """Defect: on CUDA, cuDNN autotuning and TF32 were always on (so a resumed run picked other kernels) and peak
    memory was never reset between the runs of one process. Runtime.apply on a stand-in CUDA device."""
    fake = _FakeCuda(monkeypatch)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    runtime = Runtime(torch.device("cuda"), precision="bf16", deterministic=deterministic)
    runtime.apply()
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.backends.cudnn.deterministic == deterministic
    assert torch.backends.cudnn.benchmark == (not deterministic)
    assert torch.backends.cuda.matmul.allow_tf32 == torch.backends.cudnn.allow_tf32 == (not deterministic)
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == (":4096:8" if deterministic else None)
    assert fake.calls == ["reset"] and runtime.peak_memory_bytes() == 123


def test_cpu_peak_memory_is_the_process_peak_resident_memory():
    import resource

    peak = Runtime(torch.device("cpu")).peak_memory_bytes()
    assert peak == resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 > 0


def test_epoch_clocks_are_read_after_a_device_sync(tmp_path, monkeypatch):
    """On CUDA, work is queued: the training time of an epoch is read between two synchronisations, and the
    epoch time (training plus evaluation) after a third. Recorded on CPU, where synchronize() does nothing."""
    events = []
    original_epoch, original_evaluate = Trainer.train_epoch, Trainer.evaluate
    monkeypatch.setattr(Runtime, "synchronize", lambda self: events.append("sync"))
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, e: events.append("train") or original_epoch(self, e))
    monkeypatch.setattr(Trainer, "evaluate", lambda self: events.append("evaluate") or original_evaluate(self))
    train(make_cfg([*IMAGE, "epochs=2"]), tmp_path)
    assert events == ["sync", "train", "sync", "evaluate", "sync"] * 2


def test_resume_under_other_resolved_settings_is_refused(tmp_path, monkeypatch):
    """precision=auto resolves by device, which is not in a run's identity: a CPU checkpoint resumed where auto
    means bf16 (a GPU) would silently change precision mid-run. Stand-in: the resolution changes between runs."""
    from xgrad.errors import ResumeError

    folder = tmp_path / "run"
    overrides = [*TINY, "epochs=2"]
    train_killed_at(make_cfg(overrides), folder, monkeypatch, epoch=1)
    resolve = Runtime.from_config.__func__

    def auto_means_bf16(cls, cfg, *args, **kwargs):
        runtime = resolve(cls, cfg, *args, **kwargs)
        return dataclasses.replace(runtime, precision="bf16")

    monkeypatch.setattr(Runtime, "from_config", classmethod(auto_means_bf16))
    with pytest.raises(ResumeError, match=r"precision=fp32 -> bf16.*resume=false"):
        train(make_cfg(overrides), folder)
    monkeypatch.setattr(Runtime, "from_config", classmethod(resolve))
    assert train(make_cfg(overrides), folder).status == "completed"
