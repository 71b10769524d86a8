"""LSTM language models (Zaremba et al. 2014; pytorch/examples word_language_model)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xgrad.hparams import Bool, Float, Int
from xgrad.models import register_model

__all__ = ["FP32LSTM", "LSTMLanguageModel", "lstm"]

Hidden = tuple[Tensor, Tensor]


class FP32LSTM(nn.LSTM):
    """An ``nn.LSTM`` that computes in its parameters' dtype (float32) also inside an autocast region.

    Why: CUDA autocast runs cuDNN RNNs in float16 whatever dtype it was given (ATen's
    ``aten/src/ATen/cudnn/AutocastRNN.cpp`` casts ``_cudnn_rnn``'s inputs and weights to half), which would
    train a language model in fp16 without loss scaling under ``precision=bf16``. The recurrent layers
    therefore stay out of autocast; the layers around them (embedding, decoder) follow the run's precision.
    """

    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None, weights: list[Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``nn.LSTM.forward`` in float32 outside autocast. ``weights`` (the flat list, ``nn.LSTM``'s order)
        replace the module's own for this call without being assigned to it (weight drop): assigning would make
        ``nn.LSTM`` re-pack its weights."""
        dtype = self._flat_weights[0].dtype
        with torch.autocast(input.device.type, enabled=False):
            input = input.to(dtype)
            if hx is not None:
                hx = (hx[0].to(dtype), hx[1].to(dtype))
            if weights is None:
                return super().forward(input, hx)
            if hx is None:
                zeros = input.new_zeros(self.num_layers, input.shape[1], self.hidden_size)
                hx = (zeros, zeros)
            dropout = self.dropout if self.training else 0.0
            output, h, c = torch.lstm(input, hx, [w.to(dtype) for w in weights], self.bias, self.num_layers, dropout,
                                      self.training, self.bidirectional, self.batch_first)  # fmt: skip
            return output, (h, c)


class LSTMLanguageModel(nn.Module):
    """Embedding, an n-layer LSTM with dropout between layers, and a linear decoder over the vocabulary.

    Inputs are sequence-first token ids ``[T, B]``; ``forward`` returns logits ``[T, B, V]`` and the new
    hidden state, which the training loop carries (detached) across truncated-BPTT windows.

    cuDNN wants the LSTM weights in one contiguous chunk (``flatten_parameters()``); ``.to(device)`` packs them, and
    checkpoints load into them in place. After replacing the weights any other way (e.g. ``torch.load`` of a whole
    pickled model, where pytorch/examples' word_language_model calls it), call :meth:`flatten_parameters`.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_size: int = 200,
        hidden_size: int = 200,
        num_layers: int = 2,
        dropout: float = 0.0,
        tie_weights: bool = False,
        init_range: float = 0.1,
    ) -> None:
        super().__init__()
        if tie_weights and embedding_size != hidden_size:
            raise ValueError(f"tie_weights needs embedding_size == hidden_size, got {embedding_size} and {hidden_size}")
        self.num_layers, self.hidden_size = num_layers, hidden_size
        self.drop = nn.Dropout(dropout)
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.rnn = FP32LSTM(embedding_size, hidden_size, num_layers, dropout=dropout if num_layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        if tie_weights:
            self.decoder.weight = self.embedding.weight
        # Zaremba et al. initialise every weight uniformly in [-init_range, init_range].
        for p in self.parameters():
            nn.init.uniform_(p, -init_range, init_range)

    def flatten_parameters(self) -> None:
        """Pack the LSTM weights into one contiguous chunk in cuDNN's order (a no-op off CUDA)."""
        self.rnn.flatten_parameters()

    def init_hidden(self, batch_size: int) -> Hidden:
        """Zero hidden and cell states for ``batch_size`` sequences."""
        weight = self.decoder.weight
        shape = (self.num_layers, batch_size, self.hidden_size)
        return weight.new_zeros(shape), weight.new_zeros(shape)

    def forward(self, tokens: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        """Logits ``[T, B, V]`` for the next token at every position, and the final hidden state."""
        if hidden is None:
            hidden = self.init_hidden(tokens.shape[1])
        output, hidden = self.rnn(self.drop(self.embedding(tokens)), hidden)
        return self.decoder(self.drop(output)), hidden


def _tied_sizes_match(hp: dict) -> str | None:
    if hp.get("tie_weights") and hp.get("embedding_size", 200) != hp.get("hidden_size", 200):
        return (f"invalid tie_weights=true with embedding_size={hp.get('embedding_size', 200)} and "
                f"hidden_size={hp.get('hidden_size', 200)}: tied weights need the two sizes equal")  # fmt: skip
    return None


@register_model(
    "lstm",
    task="language_model",
    hyperparameters={"embedding_size": Int(ge=1), "hidden_size": Int(ge=1), "num_layers": Int(ge=1),
                     "dropout": Float(ge=0, lt=1), "tie_weights": Bool(), "init_range": Float(gt=0)},
    rules=(_tied_sizes_match,),
)  # fmt: skip
def lstm(num_classes: int = 10000, **kwargs) -> LSTMLanguageModel:
    """LSTM language model over a vocabulary of ``num_classes`` tokens (kwargs: sizes, layers, dropout)."""
    return LSTMLanguageModel(vocab_size=num_classes, **kwargs)
