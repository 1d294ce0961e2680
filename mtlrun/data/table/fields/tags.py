"""`type: tags` target: a column of space-separated tags, one per word of a `level: word` text input (or one
tokenized with a transformers tokenizer), given to a Tagging task aligned with the text's tokens
(mtlrun.data.word_tags: each word's first token carries its tag)."""

from __future__ import annotations

import numpy as np

from mtlrun.data import hf_tokenizer
from mtlrun.data.base import TargetInfo
from mtlrun.data.table.cells import sorted_labels
from mtlrun.data.table.fields.base import REQUIRED, Field, Reading
from mtlrun.data.text import Tokenizer
from mtlrun.data.word_tags import complete_scheme, split_words, tag_tensor, word_starts


class TagsField(Field):
    """Options: text (the name of the text input the tags are aligned with; null = the only text input).
    Tags: the train split's (with the I- of each B- type: mtlrun.data.word_tags.complete_scheme), sorted,
    kept in the checkpoint (state `classes`)."""

    defaults = {"column": REQUIRED, "text": None}

    def text_input(self, reading: Reading) -> Field | None:
        return self._text_input(reading.inputs, reading.problems)

    def _text_input(self, inputs: list[Field], problems) -> Field | None:
        texts = [f for f in inputs if f.type == "text"]
        name = self.options["text"]
        chosen = [f for f in texts if name is None or f.name == name]
        if len(chosen) != 1 or (chosen[0].options["tokenizer"] is None and chosen[0].options["level"] != "word"):
            names = ", ".join(f.name for f in texts) or "none"
            why = (f"{len(chosen)} text inputs match" if len(chosen) != 1 else
                   f"data.inputs.{chosen[0].name} has level={chosen[0].options['level']}")
            problems.add(f"{self.key}.text={name}: the tags need one word-level text input to align with "
                                 f"({why}; text inputs: {names}); declare it with level: word (or a tokenizer) and "
                                 f"name it here")
            return None
        return chosen[0]

    def read(self, reading: Reading, train: np.ndarray):
        text = self.text_input(reading)
        if text is None or text.name not in reading.state["tokenizers"]:
            return None  # its own problem is reported already
        cells = reading.m.cells[self.column]
        present = np.array([c is not None and str(c).strip() != "" for c in cells])
        if not reading.train_has_some(self, present, train, self.column):
            return None
        tags = [split_words(str(c)) if p else None for c, p in zip(cells, present)]
        texts = ["" if c is None else str(c) for c in reading.m.cells[text.column]]
        miscounted = set()  # reported here; their tags are not placed (fewer tags than tokens would not fit)
        for row in np.flatnonzero(present):
            words = len(split_words(texts[row]))
            if words != len(tags[row]):
                miscounted.add(int(row))
                reading.problems.add(f"{reading.m.at(int(row), self.column)}: {len(tags[row])} tags for the {words} "
                                     f"words of column '{text.column}' (input {text.name}); give one tag per "
                                     f"whitespace-separated word", group=("count", self.key))
        names = reading.fitted("classes", self.name,
                               lambda: sorted_labels(complete_scheme({t for i in train if present[i] for t in tags[i]})))
        index = {t: i for i, t in enumerate(names)}
        ids = []
        for row, row_tags in enumerate(tags):
            unknown = [t for t in (row_tags or ()) if t not in index]
            if unknown:
                reading.problems.add(f"{reading.m.at(row, self.column)}: tag {unknown[0]!r} is not among "
                                     f"{reading.origin} {len(names)} tags ({', '.join(names[:12])})",
                                     group=("unknown", self.key))
            ids.append(None if row_tags is None or unknown or row in miscounted else [index[t] for t in row_tags])
        state = reading.state["tokenizers"][text.name]
        starts = word_starts(self._tokenizer(state, text.key), texts, state["max_len"])
        return tag_tensor(ids, starts, state["max_len"]), present

    def words(self, inputs: list[Field], state: dict, cells: dict, rows) -> tuple[list[list[str]], list[list[int]]]:
        """(words, each word's first token) of the manifest `rows`: what predictions are written per word."""
        text = self._text_input(inputs, None)
        texts = ["" if (c := cells[text.column][int(r)]) is None else str(c) for r in rows]
        tokenizer_state = state["tokenizers"][text.name]
        starts = word_starts(self._tokenizer(tokenizer_state, text.key), texts, tokenizer_state["max_len"])
        return [split_words(t) for t in texts], starts

    @staticmethod
    def _tokenizer(state: dict, key: str):
        if "hf_tokenizer" in state:
            tokenizer = hf_tokenizer.load_tokenizer(state["hf_tokenizer"], key)
            if not getattr(tokenizer, "is_fast", False):
                from mtlrun.errors import UsageError

                raise UsageError(f"{key}.tokenizer={state['hf_tokenizer']}: tags are aligned to words through a fast "
                                 f"(Rust) tokenizer's offsets; this one is a slow Python tokenizer")
            return tokenizer
        return Tokenizer.from_state(state)

    def info(self, reading: Reading) -> TargetInfo:
        names = reading.state["classes"][self.name]
        return TargetInfo("tagging", num_classes=len(names), labels=tuple(names))
