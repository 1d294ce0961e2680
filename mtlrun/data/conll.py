"""`data=conll`: sequence labelling from CoNLL files (one token per line, whitespace-separated columns, a blank
line between sentences, `-DOCSTART-` lines skipped), one file per split.

`columns` names the columns in order, e.g. CoNLL-2003's [word, pos, chunk, ner]: the one named `word` is the
text, every other named column is a tagging target of that name (so a task `ner` reads the fourth column), and
a column named `_` is skipped. Words are tokenized as a word-level text input (mtlrun's vocabulary from the
train file, or a transformers tokenizer from the local cache), and each word's first token carries its tags
(mtlrun.data.word_tags). Each target's tags are the train file's, completed to the scheme (an I- for each B-
type), and travel in the checkpoint with the vocabulary. A line with another number of columns, or a tag the
train file never has, is an error naming the file and line (every one found, at once).
"""

from __future__ import annotations

from pathlib import Path

from mtlrun.data import hf_tokenizer
from mtlrun.data.base import DataModule, DataSpec, ModalityInfo, TargetInfo, TensorDictDataset
from mtlrun.data.text import FittedVocabulary, Tokenizer
from mtlrun.data.word_tags import complete_scheme, tag_tensor, word_starts
from mtlrun.errors import ConfigError, Problems, UsageError

WORD, SKIP = "word", "_"


def read_conll(path: Path, columns: int, problems: Problems) -> list[list[tuple[list[str], int]]]:
    """The sentences of one file: per sentence, (the columns of each token line, its line number)."""
    sentences, current = [], []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(f"{path}: cannot be read as UTF-8 text: {exc}")
        return []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if current:
                sentences.append(current)
            current = []
            continue
        if len(fields) != columns:
            problems.add(f"{path}, line {number}: {len(fields)} columns, expected {columns} (data.columns); "
                         f"{line.strip()[:60]!r}", group=("columns", str(path)))
            continue
        current.append((fields, number))
    if current:
        sentences.append(current)
    return sentences


class CoNLL(FittedVocabulary, DataModule):
    name = "conll"

    def __init__(self, train: str | None = None, val: str | None = None, test: str | None = None,
                 columns=(WORD, "pos", "chunk", "ner"), max_len: int = 128, lowercase: bool = False,
                 min_freq: int = 1, tokenizer: str | None = None, **loader):
        super().__init__(**loader)
        self.paths = {"train": train, "val": val, "test": test}
        self.columns = [str(c) for c in columns]
        problems = [f"data.{split}: give the path of the {split} file (CoNLL format)"
                    for split, path in self.paths.items() if not path]
        problems += [f"data.{split}={path}: no such file" for split, path in self.paths.items()
                     if path and not Path(path).is_file()]
        if self.columns.count(WORD) != 1:
            problems.append(f"data.columns={self.columns}: name exactly one column '{WORD}' (the tokens)")
        self.targets = [c for c in self.columns if c not in (WORD, SKIP)]
        if len(set(self.targets)) != len(self.targets) or not self.targets:
            problems.append(f"data.columns={self.columns}: name each tag column once (a target of that name), '_' "
                            f"to skip one; at least one tag column")
        try:
            self.tokenizer = Tokenizer(level="word", max_len=max_len, min_freq=min_freq, lowercase=lowercase)
        except (TypeError, ValueError) as exc:
            problems.append(f"data: {exc}")
        if problems:
            raise ConfigError(problems)
        self.hf_name = tokenizer
        self.tags: dict[str, list[str]] | None = None  # from the train file, or a checkpoint
        self._raw: dict | None = None

    def _load(self) -> None:  # FittedVocabulary: the vocabulary and the tag lists are read with the files
        self._read()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "tags": self.tags}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.tags = {str(k): [str(t) for t in v] for k, v in state["tags"].items()}

    def _read(self) -> dict:
        """Per split: (words per sentence, {target: tags per sentence}, line numbers per sentence)."""
        if self._raw is not None:
            return self._raw
        problems, raw = Problems(max_shown=5), {}
        word = self.columns.index(WORD)
        for split, path in self.paths.items():
            sentences = read_conll(Path(path), len(self.columns), problems)
            raw[split] = ([[f[word] for f, _ in s] for s in sentences],
                          {t: [[f[self.columns.index(t)] for f, _ in s] for s in sentences] for t in self.targets},
                          [[n for _, n in s] for s in sentences])
            if not sentences:
                problems.add(f"data.{split}={path}: no sentence in the file")
        problems.raise_if_any()
        if self.tags is None:
            self.tags = {t: sorted(complete_scheme({tag for s in raw["train"][1][t] for tag in s}))
                         for t in self.targets}
        self._check_tags(raw)
        if self.hf_name is None:
            self.fit_vocabulary([" ".join(words) for words in raw["train"][0]])
        self._raw = raw
        return raw

    def _check_tags(self, raw: dict) -> None:
        problems = Problems(max_shown=5)
        for split, (_, tags, lines) in raw.items():
            for target, known in self.tags.items():
                known = set(known)
                for sentence, numbers in zip(tags[target], lines):
                    for tag, number in zip(sentence, numbers):
                        if tag not in known:
                            problems.add(f"{self.paths[split]}, line {number}: tag {tag!r} of column '{target}' is "
                                         f"not among the train file's {len(known)} tags", group=(target, split))
        problems.raise_if_any()

    def _hf(self):
        tokenizer = hf_tokenizer.load_tokenizer(self.hf_name, "data")
        if not getattr(tokenizer, "is_fast", False):
            raise UsageError(f"data.tokenizer={self.hf_name}: tags are aligned to words through a fast tokenizer's "
                             f"offsets; this one is a slow Python tokenizer")
        return tokenizer

    @property
    def full_spec(self) -> DataSpec:
        self._read()
        n = self.tokenizer.max_len
        vocab = len(self._hf()) if self.hf_name else self.tokenizer.vocab_size
        return DataSpec(modalities={"text": ModalityInfo("text", (n,), {"vocab_size": vocab, "max_len": n})},
                        targets={t: TargetInfo("tagging", num_classes=len(tags), labels=tuple(tags))
                                 for t, tags in self.tags.items()})

    def encode(self, words: list[list[str]]) -> tuple:
        """(ids [N, max_len], each word's first token) of the sentences `words`."""
        texts, n = [" ".join(w) for w in words], self.tokenizer.max_len
        if self.hf_name:
            tokenizer = self._hf()
            return hf_tokenizer.encode(tokenizer, texts, n), word_starts(tokenizer, texts, n)
        return self.tokenizer.encode(texts), word_starts(self.tokenizer, texts, n)

    def build(self) -> dict[str, TensorDictDataset]:
        splits = {}
        for split, (words, tags, _) in self._read().items():
            ids, starts = self.encode(words)
            targets = {}
            for target, names in self.tags.items():
                index = {t: i for i, t in enumerate(names)}
                targets[target] = tag_tensor([[index[t] for t in s] for s in tags[target]], starts, ids.shape[1])
            splits[split] = TensorDictDataset(inputs={"text": ids}, targets=targets)
        return splits

    def tagged_words(self, split: str) -> tuple[list[list[str]], list[list[int]]]:
        words = self._read()[split][0]
        return words, self.encode(words)[1]

    @classmethod
    def state_problems(cls, state: dict, config: dict | None = None) -> list[str]:
        """A checkpoint's state: the vocabulary (checked when loaded) and the tag lists of the configured columns."""
        if not isinstance(state, dict) or set(state) != {"tokenizer", "tags"}:
            return ["needs exactly the keys tokenizer and tags"]
        tags = state["tags"]
        columns = [c for c in (config or {}).get("columns", []) if c not in (WORD, SKIP)]
        if not isinstance(tags, dict) or any(not isinstance(v, list) or not v or not all(isinstance(t, str) for t in v)
                                             or len(set(v)) != len(v) for v in tags.values()):
            return ["tags: needs {target: [distinct tag names]}"]
        if columns and sorted(map(str, tags)) != sorted(columns):
            return [f"tags: has targets {sorted(map(str, tags))}, the config's columns name {sorted(columns)}"]
        return []
