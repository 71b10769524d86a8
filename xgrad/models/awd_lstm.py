"""AWD-LSTM (Merity, Keskar & Socher 2018, "Regularizing and Optimizing LSTM Language Models").

The model of salesforce/awd-lstm-lm as used, unchanged, by the PTB experiments of the AdaBelief
(juntang-zhuang/Adabelief-Optimizer, PyTorch_Experiments/LSTM) and AdaM3 (wyzjack/AdaM3, LSTM_Penn_Treebank)
repositories: embedding 400, hidden 1150, 1-3 single-layer LSTMs stacked (the last one's hidden size is the
embedding size so that the decoder can share the embedding matrix), and five regularisers:

- embedding dropout (``dropout_embedding``, 0.1): whole rows of the embedding matrix, i.e. every occurrence of
  a word in a batch, are dropped together;
- locked (variational) dropout, one mask per sequence shared across time steps, on the embeddings
  (``dropout_input``, 0.4), between LSTM layers (``dropout_hidden``, 0.25) and on the last output
  (``dropout``, 0.4);
- weight drop (DropConnect, ``weight_drop``, 0.5) on every hidden-to-hidden matrix, one mask per forward;
- activation regularisation ``ar_alpha * mean(dropped_last_output ** 2)`` and temporal activation
  regularisation ``tar_beta * mean((raw_last_output[t+1] - raw_last_output[t]) ** 2)``, returned as a penalty
  that the language-model task adds to the training loss (``forward(..., return_penalty=True)``).

Weight drop and prediction: XGrad's :class:`~xgrad.WeightPredictor` swaps the storage of every registered parameter
(``p.data = predicted``). The dropped hidden-to-hidden matrix is therefore derived from the registered parameter
``lstm.weight_hh_l0`` on every forward and never cached, so the forward always sees whatever weights the parameter
holds, and the gradient flows back to the parameter. It goes straight to the LSTM kernel with the other weights
(``torch.lstm``, what ``nn.LSTM.forward`` calls, through :class:`~xgrad.models.lstm.FP32LSTM`'s ``weights``
argument) and is never assigned to the module: ``nn.LSTM`` re-packs its weights for cuDNN (``flatten_parameters``,
a copy into a new buffer) whenever a weight attribute changes, which swapping the matrix in and out
(``torch.func.functional_call``) would do twice per forward; awd-lstm-lm avoids the same by disabling
``flatten_parameters`` on its weight-dropped LSTMs. So the LSTM's weights keep their one packed chunk (set by
``.to(device)``), and the predictor's spares mirror it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from xgrad.hparams import Bool, Float, Int
from xgrad.models import register_model
from xgrad.models.lstm import FP32LSTM

__all__ = ["AWDLSTM", "LockedDropout", "WeightDropLSTM", "awd_lstm", "embedding_dropout"]

Hidden = list[tuple[Tensor, Tensor]]


def embedding_dropout(embed: nn.Embedding, words: Tensor, p: float, training: bool) -> Tensor:
    """Look up ``words`` with whole embedding rows dropped with probability ``p`` (kept rows scaled 1/(1-p))."""
    weight = embed.weight
    if training and p > 0:
        mask = weight.new_empty((weight.shape[0], 1)).bernoulli_(1 - p) / (1 - p)
        weight = weight * mask
    return F.embedding(words, weight, embed.padding_idx)


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence and feature, the same at every time step (inputs ``[T, B, H]``)."""

    def forward(self, x: Tensor, p: float) -> Tensor:
        if not self.training or p == 0:
            return x
        mask = x.new_empty((1, x.shape[1], x.shape[2])).bernoulli_(1 - p) / (1 - p)
        return x * mask


class WeightDropLSTM(nn.Module):
    """A one-layer LSTM with DropConnect on its hidden-to-hidden matrix (``lstm.weight_hh_l0``).

    The matrix stays an ordinary registered parameter of the inner ``nn.LSTM`` (optimizers, checkpoints and the
    weight predictor see it as usual); each training forward runs the LSTM with ``dropout(weight_hh_l0)``
    substituted for it, computed afresh from the parameter.
    """

    def __init__(self, input_size: int, hidden_size: int, weight_drop: float = 0.0) -> None:
        super().__init__()
        if not 0 <= weight_drop < 1:
            raise ValueError(f"weight_drop must be in [0, 1), got {weight_drop}")
        self.lstm = FP32LSTM(input_size, hidden_size, num_layers=1)
        self.hidden_size, self.weight_drop = hidden_size, weight_drop

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if not self.training or self.weight_drop == 0:
            return self.lstm(x, hx)
        lstm = self.lstm
        dropped = F.dropout(lstm.weight_hh_l0, p=self.weight_drop, training=True)
        # The dropped matrix in place of weight_hh_l0, passed to the kernel, not assigned (see the module docstring).
        return lstm(x, hx, weights=[lstm.weight_ih_l0, dropped, lstm.bias_ih_l0, lstm.bias_hh_l0])


class AWDLSTM(nn.Module):
    """AWD-LSTM language model over ``[T, B]`` token ids; ``forward`` returns logits ``[T, B, V]`` and the state."""

    def __init__(
        self,
        vocab_size: int,
        embedding_size: int = 400,
        hidden_size: int = 1150,
        num_layers: int = 3,
        dropout: float = 0.4,
        dropout_input: float = 0.4,
        dropout_hidden: float = 0.25,
        dropout_embedding: float = 0.1,
        weight_drop: float = 0.5,
        tie_weights: bool = True,
        ar_alpha: float = 2.0,
        tar_beta: float = 1.0,
        init_range: float = 0.1,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        for name, p in (("dropout", dropout), ("dropout_input", dropout_input), ("dropout_hidden", dropout_hidden),
                        ("dropout_embedding", dropout_embedding)):  # fmt: skip
            if not 0 <= p < 1:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self.num_layers, self.embedding_size, self.hidden_size = num_layers, embedding_size, hidden_size
        self.dropout, self.dropout_input = dropout, dropout_input
        self.dropout_hidden, self.dropout_embedding = dropout_hidden, dropout_embedding
        self.ar_alpha, self.tar_beta = ar_alpha, tar_beta
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        # The last layer outputs embedding_size when the decoder shares the embedding matrix.
        sizes = [embedding_size] + [hidden_size] * (num_layers - 1) + [embedding_size if tie_weights else hidden_size]
        self.rnns = nn.ModuleList(WeightDropLSTM(sizes[i], sizes[i + 1], weight_drop) for i in range(num_layers))
        self.lockdrop = LockedDropout()
        self.decoder = nn.Linear(sizes[-1], vocab_size)
        nn.init.uniform_(self.embedding.weight, -init_range, init_range)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:
            self.decoder.weight = self.embedding.weight
        else:
            nn.init.uniform_(self.decoder.weight, -init_range, init_range)

    @property
    def has_penalty(self) -> bool:
        """Whether training adds the activation penalties (AR/TAR) to the loss."""
        return self.ar_alpha > 0 or self.tar_beta > 0

    def init_hidden(self, batch_size: int) -> Hidden:
        """Zero (hidden, cell) states of every layer for ``batch_size`` sequences."""
        weight = self.decoder.weight
        return [
            (weight.new_zeros(1, batch_size, rnn.hidden_size), weight.new_zeros(1, batch_size, rnn.hidden_size))
            for rnn in self.rnns
        ]

    def forward(self, tokens: Tensor, hidden: Hidden | None = None, return_penalty: bool = False):
        """Logits ``[T, B, V]`` and the new state; with ``return_penalty`` also the AR/TAR penalty (a scalar)."""
        if hidden is None:
            hidden = self.init_hidden(tokens.shape[1])
        x = embedding_dropout(self.embedding, tokens, self.dropout_embedding, self.training)
        x = self.lockdrop(x, self.dropout_input)
        new_hidden: Hidden = []
        for layer, rnn in enumerate(self.rnns):
            x, state = rnn(x, hidden[layer])
            new_hidden.append(state)
            if layer != self.num_layers - 1:
                x = self.lockdrop(x, self.dropout_hidden)
        raw_last = x
        dropped_last = self.lockdrop(raw_last, self.dropout)
        logits = self.decoder(dropped_last)
        if not return_penalty:
            return logits, new_hidden
        penalty = logits.new_zeros(())
        if self.training and self.ar_alpha > 0:
            penalty = penalty + self.ar_alpha * dropped_last.float().pow(2).mean()
        if self.training and self.tar_beta > 0 and raw_last.shape[0] > 1:
            penalty = penalty + self.tar_beta * (raw_last[1:] - raw_last[:-1]).float().pow(2).mean()
        return logits, new_hidden, penalty


_RATE = Float(ge=0, lt=1)


@register_model(
    "awd_lstm",
    task="language_model",
    hyperparameters={
        "embedding_size": Int(ge=1), "hidden_size": Int(ge=1), "num_layers": Int(ge=1), "dropout": _RATE,
        "dropout_input": _RATE, "dropout_hidden": _RATE, "dropout_embedding": _RATE, "weight_drop": _RATE,
        "tie_weights": Bool(), "ar_alpha": Float(ge=0), "tar_beta": Float(ge=0), "init_range": Float(gt=0),
    },
)  # fmt: skip
def awd_lstm(num_classes: int = 10000, **kwargs) -> AWDLSTM:
    """AWD-LSTM over a vocabulary of ``num_classes`` tokens (kwargs: sizes, layers, dropouts, ar_alpha, ...)."""
    return AWDLSTM(vocab_size=num_classes, **kwargs)
