"""Word-level language modelling (Penn Treebank, or the generated demo corpus) with truncated BPTT.

Training reads the batchified training stream (``batch_size`` columns) in consecutive ``dataset.bptt``-token
windows; the recurrent state is carried from one window to the next and detached, and starts from zeros at
every epoch. The reported loss is the mean cross-entropy per token (nats); perplexity is its exponential.
Validation runs at ``dataset.eval_batch_size`` columns (10) and test at ``dataset.test_batch_size`` (1), the
state again carried across the whole split. Model selection (``best_*`` in summary.json) uses validation
perplexity.

Evaluation is exact and fast: in eval mode the models have no dropout, so carrying the state makes every
prediction depend on the whole prefix of its column whatever the window length. Evaluation therefore uses
windows of ``max(bptt, dataset.eval_window_tokens // columns)`` steps (one forward each, under no_grad); the
result equals that of bptt-length windows up to floating-point rounding, with far fewer small decoder calls
at batch 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from xgrad.data import DataError, TextCorpus, batchify, bptt_windows, load_ptb, make_demo_text
from xgrad.data.ptb import num_windows
from xgrad.errors import ConfigError

from . import Runtime, Stats, Task, build_model, register_task

__all__ = ["LanguageModelling", "detach_state", "load_text_corpus"]

#: Default number of tokens (window length x columns) per evaluation forward.
EVAL_WINDOW_TOKENS = 2048


def load_text_corpus(cfg: DictConfig) -> TextCorpus:
    """The corpus named by ``cfg.dataset.name``, read from (or downloaded into) ``cfg.data_root``."""
    ds = cfg.dataset
    if ds.name == "ptb":
        return load_ptb(cfg.data_root, download=ds.get("download", True))
    if ds.name == "demo_text":
        return make_demo_text(
            int(ds.n_train), int(ds.n_valid), int(ds.n_test), int(ds.vocab_size), seed=int(ds.get("data_seed", 0))
        )
    raise ValueError(f"unknown text dataset {ds.name!r}: known are ptb, demo_text")


def detach_state(state: Any) -> Any:
    """The recurrent state with every tensor detached (tuples and lists of tensors, nested)."""
    if isinstance(state, Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


@register_task("language_model")
class LanguageModelling(Task):
    """Next-word prediction with an LSTM-family model; perplexity as the metric."""

    metric = "ppl"
    higher_is_better = False
    throughput = "tokens_per_second"
    cuda_precision = "fp32"  # the published PTB numbers are float32

    def __init__(self, cfg: DictConfig, runtime: Runtime) -> None:
        super().__init__(cfg, runtime)

        ds = cfg.dataset
        corpus = load_text_corpus(cfg)
        self.synthetic = corpus.synthetic
        if cfg.train_subset is not None:  # quick runs: the first N training tokens
            try:
                corpus = corpus.take_subset(int(cfg.train_subset))
            except ValueError as e:
                raise ConfigError(f"invalid train_subset={cfg.train_subset!r} (tokens for {ds.name}): {e}") from e
        self.vocab_size = corpus.vocab_size
        self.bptt = int(ds.bptt)
        device = runtime.device
        try:
            # batch_size is the global number of columns; with data parallelism each process takes its share.
            train = batchify(corpus.train, int(cfg.batch_size), device)
            local = int(cfg.batch_size) // runtime.world_size
            self.train_data = train[:, runtime.rank * local : (runtime.rank + 1) * local].contiguous()
            self.eval_data = {
                "val": batchify(corpus.valid, int(ds.eval_batch_size), device),
                "test": batchify(corpus.test, int(ds.test_batch_size), device),
            }
        except ValueError as e:
            raise DataError(f"{ds.name}: a split is too short for its batch size: {e}") from e
        self.eval_window_tokens = int(ds.get("eval_window_tokens", EVAL_WINDOW_TOKENS))

        model = build_model(cfg, corpus.vocab_size)
        self.model = runtime.place(model)
        self.language_model = self.model  # the plain module (the trainer may wrap self.model: compile, DDP)
        self.penalized = bool(getattr(model, "has_penalty", False))
        self.label_smoothing = float(cfg.label_smoothing)
        self.state: Any = None

    @property
    def eval_splits(self) -> list[str]:
        return ["val", "test"]

    def num_batches(self) -> int:
        return num_windows(self.train_data, self.bptt)

    def train_batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        self.state = None  # every epoch starts from a zero state (Zaremba et al.; awd-lstm-lm)
        return bptt_windows(self.train_data, self.bptt)

    def train_loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Stats]:
        inputs, targets = batch
        if self.state is None:
            self.state = self.language_model.init_hidden(inputs.shape[1])
        penalty = None
        with self.runtime.autocast():
            if self.penalized:
                logits, state, penalty = self.model(inputs, self.state, return_penalty=True)
            else:
                logits, state = self.model(inputs, self.state)
        self.state = detach_state(state)  # truncated BPTT: carry the values, not the graph
        logits, targets = logits.flatten(0, 1).float(), targets.flatten()
        nll = F.cross_entropy(logits, targets)
        loss = nll
        if self.label_smoothing > 0:
            loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        if penalty is not None:
            loss = loss + penalty
        n = targets.numel()  # known on the host: no copy to the device, no sync
        return loss, {"loss_sum": nll.detach() * n, "count": n}

    def evaluate(self, split: str) -> Stats:
        source = self.eval_data[split]
        columns = source.shape[1]
        window = max(self.bptt, self.eval_window_tokens // columns)
        state = self.language_model.init_hidden(columns)
        loss_sum = torch.zeros((), device=source.device)
        count = 0
        for inputs, targets in bptt_windows(source, window):
            with self.runtime.autocast():
                logits, state = self.language_model(inputs, state)  # plain module: no DDP collectives
            loss_sum += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
            count += targets.numel()
        return {"loss_sum": loss_sum, "count": count}

    def metrics(self, prefix: str, stats: Stats) -> dict[str, float]:
        loss = float(stats["loss_sum"]) / float(stats["count"])
        try:
            ppl = math.exp(loss)
        except OverflowError:
            ppl = math.inf
        return {f"{prefix}_loss": loss, f"{prefix}_ppl": ppl}
