"""Language modelling: PTB-format reading and errors, batchify/BPTT windows, the demo corpus, LSTM and AWD-LSTM
models (weight drop under prediction), the language-model task in the shared loop, and the PTB presets."""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import urllib.error
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import assert_resume_is_exact, make_cfg, run_cli
from xgrad import WeightPredictor
from xgrad.data import DataError, batchify, bptt_windows, build_vocabulary, load_ptb, make_demo_text
from xgrad.data import ptb as ptb_module
from xgrad.models import count_parameters, create_model
from xgrad.optim import create_optimizer
from xgrad.rundir import read_metrics, read_summary
from xgrad.schedulers import SCHEDULES
from xgrad.tasks import Runtime
from xgrad.tasks.language import LanguageModelling
from xgrad.trainer import ConfigError, train

# A tiny run on the generated corpus: 1-layer 32-unit LSTM, a few seconds per run on a CPU.
TINY_TEXT = [
    "dataset=demo_text",
    "dataset.n_train=12000",
    "dataset.n_valid=1500",
    "dataset.n_test=800",
    "dataset.vocab_size=200",
    "dataset.bptt=20",
    "model=lstm",
    "model.embedding_size=32",
    "model.hidden_size=32",
    "model.num_layers=1",
    "epochs=2",
    "batch_size=10",
    "grad_clip=0.25",
    "optimizer=adam",
    "optimizer.lr=1e-2",
    "optimizer.weight_decay=0",
    "scheduler=constant",
    "progress=line",
]


@pytest.fixture(autouse=True)
def _one_thread():
    # Small LSTMs gain nothing from a second thread, and on a shared 2-core machine two spinning threads per
    # process can slow a run tenfold; restored afterwards for the rest of the suite.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TRAIN = " the cat sat \n the dog sat down \n"
VALID = " the dog \n"
TEST = " cat sat \n down \n"


def write_ptb(root: Path, train: str = TRAIN, valid: str = VALID, test: str = TEST) -> Path:
    """Write tiny files in the PTB layout: root/ptb/ptb.{train,valid,test}.txt."""
    folder = root / "ptb"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"ptb.{name}.txt").write_text(text)
    return folder


# ----------------------------------------------------------------------------------- reading PTB files


def test_vocabulary_from_train_only_with_eos_per_line(tmp_path):
    write_ptb(tmp_path)
    corpus = load_ptb(tmp_path, download=False)
    assert corpus.vocab == ("the", "cat", "sat", "<eos>", "dog", "down")
    assert corpus.train.tolist() == [0, 1, 2, 3, 0, 4, 2, 5, 3]
    assert corpus.valid.tolist() == [0, 4, 3] and corpus.test.tolist() == [1, 2, 3, 5, 3]
    assert corpus.train.dtype == torch.int64 and corpus.synthetic is False and corpus.name == "ptb"
    assert build_vocabulary(["b a", "a c"]) == ("b", "a", "<eos>", "c")


def test_missing_files_name_data_root_files_and_fix(tmp_path):
    empty = tmp_path / "nodata"
    with pytest.raises(DataError) as info:
        load_ptb(empty, download=False)
    message = str(info.value)
    assert str(empty) in message and "ptb.train.txt" in message and "ptb.test.txt" in message
    assert "does not exist" in message and "data_root" in message and "XGRAD_DATA" in message

    folder = write_ptb(tmp_path / "partial")
    (folder / "ptb.valid.txt").unlink()
    with pytest.raises(DataError, match=r"lacks ptb\.valid\.txt"):
        load_ptb(tmp_path / "partial", download=False)


@pytest.mark.parametrize(
    ("split", "content", "problem"),
    [
        ("valid", b"\x00\x01binary\x00", "NUL bytes"),
        ("train", b"\xff\xfe not utf-8 \xff", "not UTF-8"),
        ("train", b"  \n\n", "no words"),
        ("test", b" cat sat \n the zebra \n", "line 2 has the word 'zebra'"),
    ],
)
def test_corrupt_files_name_the_file(tmp_path, split, content, problem):
    folder = write_ptb(tmp_path)
    (folder / f"ptb.{split}.txt").write_bytes(content)
    with pytest.raises(DataError) as info:
        load_ptb(tmp_path, download=False)
    message = str(info.value)
    assert str(folder / f"ptb.{split}.txt") in message and problem in message and "md5" in message


def test_download_checks_md5_and_keeps_only_good_files(tmp_path, monkeypatch):
    bodies = {"ptb.train.txt": TRAIN.encode(), "ptb.valid.txt": VALID.encode(), "ptb.test.txt": TEST.encode()}
    fetched = []

    def fake_fetch(url: str) -> bytes:
        fetched.append(url)
        return bodies[url.rsplit("/", 1)[-1]]

    monkeypatch.setattr(ptb_module, "_fetch_url", fake_fetch)
    # The real md5 sums: the tiny bodies do not match, nothing is kept.
    with pytest.raises(DataError, match="md5") as info:
        load_ptb(tmp_path, download=True)
    assert "was not kept" in str(info.value)
    assert not (tmp_path / "ptb").exists() or not any((tmp_path / "ptb").iterdir())

    monkeypatch.setattr(ptb_module, "PTB_MD5", {n: hashlib.md5(b).hexdigest() for n, b in bodies.items()})
    corpus = load_ptb(tmp_path, download=True)
    assert len(corpus.vocab) == 6 and sorted(p.name for p in (tmp_path / "ptb").iterdir()) == sorted(bodies)
    assert all(url.startswith(ptb_module.PTB_URL) for url in fetched)


def test_download_failure_is_a_data_error(tmp_path, monkeypatch):
    def offline(url: str) -> bytes:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(ptb_module, "_fetch_url", offline)
    with pytest.raises(DataError) as info:
        load_ptb(tmp_path / "root", download=True)
    message = str(info.value)
    assert "no network" in message and "ptb.train.txt" in message and str(tmp_path / "root") in message


# ----------------------------------------------------------------------------------- batches


def test_batchify_makes_contiguous_columns():
    data = torch.arange(27)
    batched = batchify(data, 4)
    assert batched.shape == (6, 4) and batched.is_contiguous()
    for j in range(4):  # column j is the j-th contiguous chunk; the remainder (24..26) is dropped
        assert batched[:, j].tolist() == list(range(6 * j, 6 * j + 6))
    with pytest.raises(ValueError, match="too few"):
        batchify(torch.arange(5), 4)


def test_bptt_windows_cover_every_prediction_once():
    source = batchify(torch.arange(40), 4)  # [10, 4]
    windows = list(bptt_windows(source, 4))
    assert [len(x) for x, _ in windows] == [4, 4, 1]
    assert ptb_module.num_windows(source, 4) == 3
    inputs = torch.cat([x for x, _ in windows])
    targets = torch.cat([y for _, y in windows])
    assert torch.equal(inputs, source[:-1]) and torch.equal(targets, source[1:])


# ----------------------------------------------------------------------------------- the generated corpus


def test_demo_text_is_deterministic_synthetic_and_structured():
    a = make_demo_text(20000, 2000, 2000, 500, seed=0)
    b = make_demo_text.__wrapped__(20000, 2000, 2000, 500, seed=0)  # bypass the cache: really regenerated
    assert all(torch.equal(getattr(a, s), getattr(b, s)) for s in ("train", "valid", "test"))
    assert a.synthetic is True and a.name == "demo_text" and a.vocab_size == 500 and a.vocab[-1] == "<eos>"
    assert not torch.equal(make_demo_text(20000, 2000, 2000, 500, seed=1).train, a.train)
    # Structure: the previous word predicts the next far better than word frequencies alone.
    train, v = a.train, a.vocab_size
    unigram = torch.bincount(train, minlength=v).double() + 0.1
    pairs = torch.bincount(train[:-1] * v + train[1:], minlength=v * v).double().view(v, v) + 0.1
    valid = a.valid
    h_uni = -(unigram / unigram.sum()).log()[valid[1:]].mean()
    h_bi = -(pairs / pairs.sum(1, keepdim=True)).log()[valid[:-1], valid[1:]].mean()
    assert math.exp(h_uni) > 3 * math.exp(h_bi)


# ----------------------------------------------------------------------------------- models


def _awd_count(vocab: int, emb: int, hid: int, layers: int) -> int:
    sizes = [emb] + [hid] * (layers - 1) + [emb]
    lstm = sum(4 * o * (i + o) + 8 * o for i, o in itertools.pairwise(sizes))
    return vocab * emb + vocab + lstm  # tied decoder: only its bias is extra


def test_awd_lstm_parameter_count_and_forward():
    for layers in (1, 2, 3):
        model = create_model("awd_lstm", num_classes=10000, num_layers=layers)
        assert count_parameters(model) == _awd_count(10000, 400, 1150, layers)
    assert count_parameters(create_model("awd_lstm", num_classes=10000)) == 24_221_600  # "24M" in Merity et al.
    model = create_model("awd_lstm", num_classes=50, embedding_size=8, hidden_size=16, num_layers=3)
    assert model.decoder.weight is model.embedding.weight
    tokens = torch.randint(0, 50, (7, 3))
    logits, state = model(tokens)
    assert logits.shape == (7, 3, 50) and [tuple(h.shape) for h, _ in state] == [(1, 3, 16), (1, 3, 16), (1, 3, 8)]
    logits, state, penalty = model(tokens, state, return_penalty=True)
    assert penalty.item() > 0  # AR + TAR in training mode
    model.eval()
    with torch.no_grad():
        first, second = model(tokens)[0], model(tokens)[0]
        assert torch.equal(first, second)  # no dropout of any kind in eval mode
        assert model(tokens, return_penalty=True)[2].item() == 0


def test_weight_drop_drops_and_only_in_training():
    kw = dict(embedding_size=8, hidden_size=16, num_layers=2, dropout=0.0, dropout_input=0.0, dropout_hidden=0.0,
              dropout_embedding=0.0)  # fmt: skip
    tokens = torch.randint(0, 30, (6, 2))
    dropped = create_model("awd_lstm", num_classes=30, weight_drop=0.5, **kw)
    plain = create_model("awd_lstm", num_classes=30, weight_drop=0.0, **kw)
    plain.load_state_dict(dropped.state_dict())
    with torch.no_grad():
        assert torch.equal(plain(tokens)[0], plain.eval()(tokens)[0])  # nothing else random
        assert not torch.allclose(dropped(tokens)[0], plain(tokens)[0])
        assert torch.allclose(dropped.eval()(tokens)[0], plain(tokens)[0])


def test_weight_drop_never_makes_the_lstm_repack_its_weights():
    """The dropped matrix goes to the LSTM kernel without being assigned to the nn.LSTM, so the LSTM never calls
    flatten_parameters (on CUDA: a copy of all its weights into a new buffer, twice per forward when the matrix is
    swapped in and out, which would also move the storage the predictor's spares mirror); outputs are those of
    swapping it in with functional_call."""
    torch.manual_seed(0)
    model = create_model("awd_lstm", num_classes=30, embedding_size=8, hidden_size=16, num_layers=2, weight_drop=0.5)
    repacks = []
    for rnn in model.rnns:
        rnn.lstm.flatten_parameters = lambda: repacks.append(1)  # shadows nn.LSTM's method
    tokens = torch.randint(0, 30, (6, 2))
    model(tokens)[0].sum().backward()
    model.eval()
    model(tokens)
    assert repacks == []
    layer = model.rnns[0].train()
    x, zeros = torch.randn(5, 2, 8), (torch.zeros(1, 2, 16), torch.zeros(1, 2, 16))
    torch.manual_seed(3)
    ours, (h, c) = layer(x)
    torch.manual_seed(3)
    dropped = torch.nn.functional.dropout(layer.lstm.weight_hh_l0, p=0.5, training=True)
    reference, (h_ref, c_ref) = torch.func.functional_call(layer.lstm, {"weight_hh_l0": dropped}, (x, zeros))
    assert torch.equal(ours, reference) and torch.equal(h, h_ref) and torch.equal(c, c_ref)


def test_weight_drop_uses_the_predicted_weights():
    torch.manual_seed(0)
    model = create_model("awd_lstm", num_classes=40, embedding_size=8, hidden_size=16, num_layers=2)
    tokens = torch.randint(0, 40, (5, 3))
    optimizer = create_optimizer("adam", model.parameters(), lr=0.05)
    model(tokens)[0].square().mean().backward()
    optimizer.step()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    predictor = WeightPredictor(optimizer, steps=1)
    optimizer.zero_grad()
    with predictor:
        predicted = {k: v.clone() for k, v in model.state_dict().items()}
        torch.manual_seed(1)
        out = model(tokens)[0]
        out.square().mean().backward()
    hh = model.rnns[0].lstm.weight_hh_l0
    assert hh.grad is not None and hh.grad.abs().sum() > 0
    assert not torch.equal(predicted["rnns.0.lstm.weight_hh_l0"], original["rnns.0.lstm.weight_hh_l0"])
    # The same forward (same dropout masks) at the predicted weights, as a separate model: identical.
    twin = copy.deepcopy(model)
    twin.load_state_dict(predicted)
    torch.manual_seed(1)
    assert torch.allclose(twin(tokens)[0], out.detach(), atol=1e-6)
    # Restore is exact, and a forward after it sees the restored weights, not a cached dropped matrix.
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    torch.manual_seed(1)
    assert not torch.allclose(model(tokens)[0], out.detach())


def test_lstm_model_tied_and_untied():
    model = create_model("lstm", num_classes=30, embedding_size=12, hidden_size=12, num_layers=3, tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    logits, (h, c) = model(torch.randint(0, 30, (4, 2)))
    assert logits.shape == (4, 2, 30) and h.shape == c.shape == (3, 2, 12)
    with pytest.raises(ValueError, match="tie_weights"):
        create_model("lstm", num_classes=30, embedding_size=10, hidden_size=12, tie_weights=True)


# ----------------------------------------------------------------------------------- the task in the loop


def _comparable(rows):
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "tokens_per_second")} for r in rows]


def test_demo_text_run_lowers_perplexity(tmp_path):
    result = train(make_cfg([*TINY_TEXT, "epochs=3"]), tmp_path)
    assert result.status == "completed"
    rows = read_metrics(tmp_path)
    expected = {"epoch", "lr", "train_loss", "train_ppl", "val_loss", "val_ppl", "test_loss", "test_ppl",
                "epoch_seconds", "tokens_per_second"}  # fmt: skip
    assert set(rows[0]) == expected
    assert rows[0]["val_ppl"] < 200 and rows[-1]["val_ppl"] < 0.6 * rows[0]["val_ppl"]  # uniform guess: 200
    assert rows[-1]["train_ppl"] < rows[0]["train_ppl"]
    assert all(math.isclose(r["val_ppl"], math.exp(r["val_loss"])) for r in rows)
    assert all(r["tokens_per_second"] > 0 for r in rows)
    s = read_summary(tmp_path)
    assert s["task"] == "language_model" and s["dataset"] == "demo_text" and s["synthetic"] is True
    assert s["best_selected_on"] == "val"
    best = rows[s["best_epoch"] - 1]
    assert best["val_ppl"] == min(r["val_ppl"] for r in rows) and s["best_test_ppl"] == best["test_ppl"]


def test_kill_and_resume_gives_identical_metrics(tmp_path, monkeypatch):
    overrides = [*TINY_TEXT, "epochs=3", "optimizer=sgdm", "optimizer.lr=2", "predict=true", "model.dropout=0.3",
                 "scheduler=exponential", "scheduler.constant_epochs=2"]  # fmt: skip
    whole = assert_resume_is_exact(overrides, tmp_path, monkeypatch)
    assert read_metrics(whole)[2]["lr"] == 1.0  # halved after the 2 constant epochs


def test_awd_lstm_trains_with_prediction_and_accumulation(tmp_path):
    cfg = make_cfg([*TINY_TEXT, "epochs=1", "model=awd_lstm", "model.embedding_size=16", "model.hidden_size=24",
                    "model.num_layers=2", "optimizer=adabelief", "optimizer.lr=1e-2", "predict=true",
                    "grad_accum=2"])  # fmt: skip
    assert train(cfg, tmp_path).status == "completed"
    assert read_metrics(tmp_path)[0]["val_ppl"] < 200


def test_evaluation_windows_do_not_change_the_result():
    cfg = make_cfg([*TINY_TEXT, "model.dropout=0.5"])
    torch.manual_seed(0)
    task = LanguageModelling(cfg, Runtime(torch.device("cpu")))
    task.model.eval()
    with torch.no_grad():
        task.eval_window_tokens = 1  # bptt-length windows
        short = {s: task.evaluate(s) for s in task.eval_splits}
        task.eval_window_tokens = 100_000  # one forward per split
        long = {s: task.evaluate(s) for s in task.eval_splits}
    for split in task.eval_splits:
        assert int(short[split]["count"]) == int(long[split]["count"])
        assert math.isclose(float(short[split]["loss_sum"]), float(long[split]["loss_sum"]), rel_tol=1e-5)
    assert int(long["test"]["count"]) == 800 - 1  # test at batch 1: every token but the first is predicted


def test_state_is_carried_across_windows_detached_and_reset_each_epoch():
    torch.manual_seed(0)
    task = LanguageModelling(make_cfg(TINY_TEXT), Runtime(torch.device("cpu")))
    assert task.num_batches() == -(-(12000 // 10 - 1) // 20)
    batches = task.train_batches(0)
    first, second = next(batches), next(batches)
    assert torch.equal(first[0][1:], first[1][:-1]) and torch.equal(first[1][-1], second[0][0])
    task.train_loss(first)
    carried = task.state
    assert all(not t.requires_grad and t.abs().sum() > 0 for t in carried)
    loss, stats = task.train_loss(second)
    loss.backward()  # the graph reaches back to this window only
    assert int(stats["count"]) == second[1].numel()
    task.train_batches(1)
    assert task.state is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=resnet20"], "model=resnet20 is an image model; dataset .* needs a language model"),
        (["val_size=100"], "val_size=100"),
        (["dataset.bptt=0"], "dataset.bptt=0"),
        (["+model.layers=2"], r"unknown key model.layers=2 \(did you mean model.num_layers\?\)"),
    ],
)
def test_bad_language_configs_raise_config_errors(tmp_path, overrides, message):
    base = [o for o in TINY_TEXT if not o.startswith("model.")] if "model=resnet20" in overrides else TINY_TEXT
    with pytest.raises(ConfigError, match=message):
        train(make_cfg([*base, *overrides]), tmp_path)


def test_cli_ptb_missing_and_corrupt_data(tmp_path):
    empty = tmp_path / "nodata"
    args = ["dataset=ptb", "model=lstm", "epochs=1", "dataset.download=false"]
    proc = run_cli([*args, f"data_root={empty}"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert str(empty) in proc.stderr and "ptb.train.txt" in proc.stderr

    folder = write_ptb(tmp_path / "bad", test=" cat \n zebra \n")
    proc = run_cli([*args, f"data_root={tmp_path / 'bad'}"], tmp_path)
    assert proc.returncode == 2 and str(folder / "ptb.test.txt") in proc.stderr and "zebra" in proc.stderr


def test_short_run_on_ptb_format_files(tmp_path):
    words = [f"w{i * 7 % 13}" for i in range(400)]
    lines = lambda n: "\n".join(" ".join(words[i : i + 10]) for i in range(0, n, 10)) + "\n"  # noqa: E731
    write_ptb(tmp_path / "data", train=lines(400), valid=lines(200), test=lines(100))
    cfg = make_cfg(["experiment=ptb_zaremba_small", f"data_root={tmp_path / 'data'}", "epochs=1",
                    "model.hidden_size=16", "model.embedding_size=16", "batch_size=4", "progress=line"])  # fmt: skip
    assert train(cfg, tmp_path / "run").status == "completed"
    s = read_summary(tmp_path / "run")
    assert s["dataset"] == "ptb" and s["synthetic"] is False and s["final_test_ppl"] > 1


# ----------------------------------------------------------------------------------- presets and schedules


def test_zaremba_small_preset_stores_the_rescaled_recipe():
    cfg = make_cfg(["experiment=ptb_zaremba_small"])
    opt = OmegaConf.to_container(cfg.optimizer, resolve=True)
    assert opt == {"name": "sgd", "lr": 20.0, "weight_decay": 0.0}  # lr 1 x bptt 20
    assert cfg.grad_clip == 0.25 and cfg.dataset.bptt == 20 and cfg.batch_size == 20 and cfg.epochs == 13
    assert (cfg.dataset.name, cfg.model.name, cfg.model.num_layers, cfg.model.hidden_size) == ("ptb", "lstm", 2, 200)
    assert cfg.model.dropout == 0 and cfg.model.init_range == 0.1 and cfg.dataset.test_batch_size == 1
    schedule = SCHEDULES[cfg.scheduler.name].build(cfg.scheduler, cfg.epochs)
    assert [schedule(e) for e in range(7)] == [1, 1, 1, 1, 0.5, 0.25, 0.125]
    medium = make_cfg(["experiment=ptb_zaremba_medium"])
    assert medium.optimizer.lr == 35.0 and math.isclose(medium.grad_clip * 35, 5.0)
    assert (medium.model.hidden_size, medium.model.dropout, medium.epochs) == (650, 0.5, 39)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_awd_lstm_presets_per_optimizer(layers):
    expected = {  # (lr, eps) of the AdaBelief/AdaM3 PTB protocol; None: the optimizer has no eps
        "adam": (1e-3 if layers == 1 else 1e-2, 1e-8),
        "adamw": (1e-3 if layers == 1 else 1e-2, 1e-8),
        "adabelief": (1e-3 if layers == 1 else 1e-2, 1e-16 if layers == 1 else 1e-12),
        "adam3": (1e-3 if layers == 1 else 1e-2, 1e-16),
        "sgd": (30.0, None),
        "sgdm": (3.0, None),
    }
    model = torch.nn.Linear(2, 2)
    for name, (lr, eps) in expected.items():
        cfg = make_cfg([f"experiment=ptb_awd_lstm_{layers}layer", f"optimizer={name}"])
        assert (cfg.model.name, cfg.model.num_layers, cfg.epochs, cfg.batch_size) == ("awd_lstm", layers, 200, 20)
        assert cfg.dataset.bptt == 70 and cfg.grad_clip == 0.25 and list(cfg.scheduler.milestones) == [100, 145]
        opt = OmegaConf.to_container(cfg.optimizer, resolve=True)
        assert (opt["lr"], opt.get("eps"), opt["weight_decay"]) == (lr, eps, 1.2e-6)
        hp = {k: v for k, v in opt.items() if k != "name" and v is not None}
        create_optimizer(name, model.parameters(), **hp)  # valid once null entries are left out


def test_cpu_presets_are_reduced_scale():
    for preset in ("cpu_demo_text", "cpu_ptb_zaremba_small", "cpu_ptb_awd_lstm"):
        cfg = make_cfg([f"experiment={preset}"])
        assert cfg.reduced_scale is True and cfg.dataset.task == "language_model"
    assert make_cfg(["experiment=cpu_demo_text"]).dataset.name == "demo_text"
