"""A character- or word-level tokenizer that needs no download, for the text modality.

It turns strings into the layout the text encoders read (mtlrun.data.base.ModalityInfo): a LongTensor
[N, max_len] of token ids, right-padded with 0 (`<pad>`), 1 (`<unk>`) for a token not in the vocabulary.
The vocabulary is built from the training texts only, so validation and test words the model never saw
map to `<unk>` exactly as they would in deployment. Its order is deterministic (frequency, then the token
itself), so the same training texts always give the same ids, whatever the order of the texts or the
Python hash seed.

`state_dict()` is what a data module puts in the checkpoint for `mtlrun eval` to encode the data as
training did; it holds only str / int / bool / list values, so it loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

PAD, UNK = 0, 1
SPECIALS = ("<pad>", "<unk>")
LEVELS = ("char", "word")

# A word is a run of letters/digits/underscore; every other non-space character is a token of its own,
# so "don't!" is ["don", "'", "t", "!"] and punctuation is not glued to the word before it.
_WORD = re.compile(r"\w+|[^\w\s]")
_STATE_KEYS = ("level", "max_len", "lowercase", "min_freq", "vocab")


class Tokenizer:
    """Maps texts to padded id tensors with a vocabulary fitted on the training texts.

    Ids: 0 `<pad>`, 1 `<unk>`, then the tokens seen at least `min_freq` times in the fitted texts, by
    descending frequency, ties broken alphabetically. `level="char"` makes every character a token,
    `level="word"` splits on whitespace and punctuation (regex `\\w+|[^\\w\\s]`). `encode` truncates
    to `max_len` tokens and pads with 0.
    """

    def __init__(self, level: str = "char", max_len: int = 64, min_freq: int = 1, lowercase: bool = True):
        if level not in LEVELS:
            raise ValueError(f"level={level!r}: valid levels are {', '.join(map(repr, LEVELS))}")
        for name, value in (("max_len", max_len), ("min_freq", min_freq)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r}: must be an integer >= 1")
        if not isinstance(lowercase, bool):
            raise TypeError(f"lowercase={lowercase!r}: must be true or false")
        self.level = level
        self.max_len = max_len
        self.min_freq = min_freq
        self.lowercase = lowercase
        self.vocab: list[str] = []  # empty until fit
        self._ids: dict[str, int] = {}

    # ------------------------------------------------------------------------------------------ fitting

    def tokenize(self, text: str) -> list[str]:
        """The tokens of one text (lower-cased first when `lowercase`), before any truncation."""
        if self.lowercase:
            text = text.lower()
        return list(text) if self.level == "char" else _WORD.findall(text)

    def fit(self, texts: Sequence[str]) -> Tokenizer:
        """Build the vocabulary from `texts` (the training split only); replaces any earlier one."""
        texts = _as_texts(texts, "fit")
        if not texts:
            raise ValueError("Tokenizer.fit got no texts: the vocabulary is built from the training texts, "
                             "so the training split must hold at least one")
        counts = Counter()
        for text in texts:
            counts.update(self.tokenize(text))
        kept = sorted((t for t, c in counts.items() if c >= self.min_freq), key=lambda t: (-counts[t], t))
        self._set_vocab([*SPECIALS, *kept])
        return self

    def _set_vocab(self, vocab: list[str]) -> None:
        self.vocab = list(vocab)
        # the specials are not looked up: "<pad>" in a text is split into characters / "<", "pad", ">"
        self._ids = {token: i for i, token in enumerate(self.vocab) if i >= len(SPECIALS)}

    @property
    def fitted(self) -> bool:
        return bool(self.vocab)

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included: the encoder's embedding table has this many rows."""
        return len(self.vocab)

    # ---------------------------------------------------------------------------------------- encoding

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """LongTensor [len(texts), max_len]: ids of the first max_len tokens, then 0s; unknown tokens -> 1."""
        texts = _as_texts(texts, "encode")
        if not self.fitted:
            raise ValueError("Tokenizer.encode called before fit: fit the vocabulary on the training texts "
                             "first (or load_state_dict a fitted tokenizer's state)")
        get, n = self._ids.get, self.max_len
        rows = [[get(t, UNK) for t in self.tokenize(text)[:n]] for text in texts]
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        out = np.zeros((len(rows), n), dtype=np.int64)
        # one scatter for the whole batch instead of a slice assignment per row
        out[np.arange(n) < lengths[:, None]] = np.fromiter(
            (i for row in rows for i in row), dtype=np.int64, count=int(lengths.sum()))
        return torch.from_numpy(out)

    def decode(self, ids) -> str | list[str]:
        """Text of an id sequence [L] (a str) or of a batch [N, L] (a list); padding is dropped.

        For debugging: unknown tokens read `<unk>`, and at word level tokens are joined by spaces, so
        the original spacing and case are not restored.
        """
        if not self.fitted:
            raise ValueError("Tokenizer.decode called before fit")
        ids = torch.as_tensor(ids)
        if ids.dim() == 2:
            return [self.decode(row) for row in ids]
        if ids.dim() != 1:
            raise ValueError(f"decode expects ids of shape [L] or [N, L], got {tuple(ids.shape)}")
        tokens = [self.vocab[i] if 0 <= i < len(self.vocab) else SPECIALS[UNK] for i in ids.tolist() if i != PAD]
        return ("" if self.level == "char" else " ").join(tokens)

    # ------------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {"level": self.level, "max_len": self.max_len, "lowercase": self.lowercase,
                "min_freq": self.min_freq, "vocab": list(self.vocab)}

    def load_state_dict(self, state: dict) -> None:
        missing = [k for k in _STATE_KEYS if k not in state]
        unknown = sorted(set(state) - set(_STATE_KEYS))
        if missing or unknown:
            raise ValueError(f"not a Tokenizer state: missing keys {missing}, unknown keys {unknown}")
        vocab = state["vocab"]
        if not isinstance(vocab, (list, tuple)) or not all(isinstance(t, str) for t in vocab) \
                or (vocab and tuple(vocab[:len(SPECIALS)]) != SPECIALS):
            raise ValueError(f"not a Tokenizer state: vocab must be a list of str starting with {list(SPECIALS)}")
        self.__init__(level=state["level"], max_len=state["max_len"], min_freq=state["min_freq"],
                      lowercase=state["lowercase"])  # re-validates the options
        self._set_vocab(list(vocab))

    @classmethod
    def from_state(cls, state: dict) -> Tokenizer:
        tokenizer = cls()
        tokenizer.load_state_dict(state)
        return tokenizer

    def __repr__(self) -> str:
        return (f"Tokenizer(level={self.level!r}, max_len={self.max_len}, min_freq={self.min_freq}, "
                f"lowercase={self.lowercase}, vocab_size={self.vocab_size})")


class FittedVocabulary:
    """The text vocabulary of a data module (`self.tokenizer`): fitted on the training texts when the module
    first reads its data, unless a checkpoint's was loaded before (`load_state_dict`, what `mtlrun eval` does
    so that texts are encoded as in training). The module defines `_load()`, which reads its splits and calls
    `fit_vocabulary` with the training texts; its checkpoint state is `{"tokenizer": ...}`."""

    tokenizer: Tokenizer
    _fitted: bool = False

    def state_dict(self) -> dict:
        self._load()
        return {"tokenizer": self.tokenizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.tokenizer = Tokenizer.from_state(state["tokenizer"])
        self._fitted = True

    def fit_vocabulary(self, texts: Sequence[str]) -> None:
        """Fits the tokenizer on `texts` (the training split's), unless it was fitted or loaded already."""
        if not self._fitted:
            self.tokenizer.fit(texts)
            self._fitted = True


def _as_texts(texts, method: str) -> list[str]:
    # A bare string is a Sequence[str] of characters: fitting or encoding it that way is always a bug.
    if isinstance(texts, str):
        raise TypeError(f"Tokenizer.{method} takes a sequence of texts, got a single str; wrap it in a list")
    texts = list(texts)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"Tokenizer.{method} takes texts (str), got a {type(bad).__name__}: {bad!r}")
    return texts
