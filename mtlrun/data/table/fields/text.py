"""`type: text` input: a column of texts, tokenized with a vocabulary fitted on the train split: long [max_len]."""

from __future__ import annotations


import numpy as np
import torch

from mtlrun.data.base import ModalityInfo
from mtlrun.data.table.fields.base import REQUIRED, Field, Reading
from mtlrun.data.text import LEVELS, Tokenizer


class TextField(Field):
    """Options: level (char | word), max_len, min_freq, lowercase: those of mtlrun.data.text.Tokenizer, whose
    fitted state (with the vocabulary) is kept in the checkpoint."""

    defaults = {"column": REQUIRED, "level": "char", "max_len": 64, "min_freq": 1, "lowercase": True}

    def check_options(self, problems: list[str]) -> None:
        try:
            self._tokenizer()
        except (TypeError, ValueError) as exc:
            problems.append(f"{self.key}: {exc} (levels: {', '.join(LEVELS)})")

    def _tokenizer(self) -> Tokenizer:
        o = self.options
        return Tokenizer(level=o["level"], max_len=o["max_len"], min_freq=o["min_freq"], lowercase=o["lowercase"])

    def read(self, reading: Reading, train: np.ndarray):
        cells = reading.m.cells[self.column]
        texts = ["" if c is None else str(c) for c in cells]
        present = np.array([c is not None for c in cells])
        if not reading.train_has_some(self, present, train, self.column):
            return None
        state = reading.fitted("tokenizers", self.name,
                               lambda: self._tokenizer().fit([texts[i] for i in train if present[i]]).state_dict())
        ids = Tokenizer.from_state(state).encode(texts)
        ids[torch.from_numpy(~present)] = 0
        return ids, present

    def info(self, reading: Reading) -> ModalityInfo:
        tokenizer = Tokenizer.from_state(reading.state["tokenizers"][self.name])
        return ModalityInfo("text", (tokenizer.max_len,), {"vocab_size": tokenizer.vocab_size,
                                                           "max_len": tokenizer.max_len})
