"""`type: text` input: a column of texts, tokenized with a vocabulary fitted on the train split (or with a
transformers tokenizer from the local cache, `tokenizer: NAME`): long [max_len]."""

from __future__ import annotations

import numpy as np
import torch

from mtlrun.data import hf_tokenizer
from mtlrun.data.base import ModalityInfo
from mtlrun.data.table.fields.base import REQUIRED, Field, Reading
from mtlrun.data.text import LEVELS, Tokenizer


class TextField(Field):
    """Options: level (char | word), max_len, min_freq, lowercase: those of mtlrun.data.text.Tokenizer, whose
    fitted state (with the vocabulary) is kept in the checkpoint. `tokenizer: NAME` (a transformers model id or
    folder, from the local cache) tokenizes with that model's tokenizer instead (max_len still applies)."""

    defaults = {"column": REQUIRED, "level": "char", "max_len": 64, "min_freq": 1, "lowercase": True,
                "tokenizer": None}

    def check_options(self, problems: list[str]) -> None:
        try:
            self._tokenizer()
        except (TypeError, ValueError) as exc:
            problems.append(f"{self.key}: {exc} (levels: {', '.join(LEVELS)})")
        name = self.options["tokenizer"]
        if name is not None and (not isinstance(name, str) or not name):
            problems.append(f"{self.key}.tokenizer={name!r}: null (mtlrun's char / word vocabulary) or a "
                            f"transformers model id or folder, e.g. bert-base-uncased")

    def _tokenizer(self) -> Tokenizer:
        o = self.options
        return Tokenizer(level=o["level"], max_len=o["max_len"], min_freq=o["min_freq"], lowercase=o["lowercase"])

    def read(self, reading: Reading, train: np.ndarray):
        cells = reading.m.cells[self.column]
        texts = ["" if c is None else str(c) for c in cells]
        present = np.array([c is not None for c in cells])
        if not reading.train_has_some(self, present, train, self.column):
            return None
        if self.options["tokenizer"] is not None:
            state = reading.fitted("tokenizers", self.name, self._hf_state)
        else:
            state = reading.fitted("tokenizers", self.name,
                                   lambda: self._tokenizer().fit([texts[i] for i in train if present[i]]).state_dict())
        if "hf_tokenizer" in state:
            ids = hf_tokenizer.encode(hf_tokenizer.load_tokenizer(state["hf_tokenizer"], self.key), texts,
                                      state["max_len"])
        else:
            ids = Tokenizer.from_state(state).encode(texts)
        ids[torch.from_numpy(~present)] = 0
        return ids, present

    def _hf_state(self) -> dict:
        name, max_len = self.options["tokenizer"], self.options["max_len"]
        vocab_size = len(hf_tokenizer.load_tokenizer(name, self.key))
        return {"hf_tokenizer": name, "max_len": max_len, "vocab_size": vocab_size}

    def info(self, reading: Reading) -> ModalityInfo:
        state = reading.state["tokenizers"][self.name]
        if "hf_tokenizer" in state:
            return ModalityInfo("text", (state["max_len"],), {"vocab_size": state["vocab_size"],
                                                              "max_len": state["max_len"]})
        tokenizer = Tokenizer.from_state(state)
        return ModalityInfo("text", (tokenizer.max_len,), {"vocab_size": tokenizer.vocab_size,
                                                           "max_len": tokenizer.max_len})
