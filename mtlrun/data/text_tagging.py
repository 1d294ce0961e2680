"""`text_tagging`: a synthetic corpus for sequence labelling (no download; a pure function of `seed`).

Sentences from a small grammar, SUBJECT VERB-PHRASE [OBJECT] [PREPOSITIONAL PHRASES] [ADVERB] ".", each
word tagged three ways, plus one label per sentence:

- `pos` (tagging): part of speech, DET ADJ NOUN PROPN PRON AUX VERB ADV PREP PUNCT (macro-F1).
- `chunk` (tagging, BIO): NP, VP, PP and ADVP chunks, as CoNLL-2000.
- `ner` (tagging, BIO): PER, LOC and ORG entities.
- `topic` (classification, 3 classes): sports, business or travel; most content words come from the
  topic's lists, a quarter from the others', so the label is a vote over the sentence.

The words are ambiguous, so a word list is not enough: "book", "watch", "park", "train" ... are nouns after
a determiner and verbs after a pronoun or "will"; "jordan", "paris", "sydney" ... are a person as subject
or object, a location after "in" / "to" / "from" / "near" / "at", part of an organisation before "group",
"inc" or "united", and a person's last name after a first name (right context matters: a bidirectional
encoder is needed for ORG). The chunks follow the parts of speech, and the entities sit inside NP chunks.

`label_fraction: {task: f}` keeps the labels of that task for a fraction f of the training sentences (the
others are `label_mask` False), to train with partial labels. The vocabulary is fitted on the training
sentences and travels in the checkpoint (`state_dict`); the tag names are fixed (TAGS).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from mtlrun.data.base import SPLITS, DataModule, DataSpec, ModalityInfo, TargetInfo, TensorDictDataset
from mtlrun.data.multidigits import hide_unlabelled, label_mask
from mtlrun.data.text import FittedVocabulary, Tokenizer
from mtlrun.errors import ConfigError

TAGS = {
    "pos": ("DET", "ADJ", "NOUN", "PROPN", "PRON", "AUX", "VERB", "ADV", "PREP", "PUNCT"),
    "chunk": ("O", "B-NP", "I-NP", "B-VP", "I-VP", "B-PP", "B-ADVP"),
    "ner": ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"),
}
TOPICS = ("sports", "business", "travel")
TARGETS = {**{task: TargetInfo("tagging", num_classes=len(tags), labels=tags) for task, tags in TAGS.items()},
           "topic": TargetInfo("classification", num_classes=len(TOPICS))}

DETS = ("the", "a", "this", "that", "every", "some")
PRONOUNS = ("they", "we", "you", "i")
AMBIGUOUS = ("book", "watch", "park", "train", "plan", "visit", "report", "fly", "run", "light")
NOUNS = {"sports": ("team", "match", "coach", "goal", "player", "season", "ball"),
         "business": ("market", "deal", "company", "price", "share", "profit", "bank"),
         "travel": ("city", "hotel", "flight", "beach", "museum", "trip", "river")}
VERBS = {"sports": ("wins", "loses", "scores", "trains", "plays"),
         "business": ("buys", "sells", "invests", "signs", "trades"),
         "travel": ("visits", "leaves", "reaches", "tours", "flies")}
ADJS = {"sports": ("fast", "strong", "tired"), "business": ("rich", "global", "risky"),
        "travel": ("sunny", "quiet", "famous")}
ADVERBS = ("today", "again", "quickly", "often", "here")
FIRST = ("anna", "john", "maria", "peter", "lisa", "omar")
LAST = ("smith", "lee", "chen", "garcia")
PLACES = ("jordan", "paris", "washington", "georgia", "sydney", "chelsea", "austin", "florence", "lincoln")
CITIES = ("berlin", "london", "tokyo", "cairo", "lima")
ORG_NAMES = ("acme", "globex", "initech")
ORG_SUFFIXES = ("group", "inc", "united")
LOC_PREPS = ("in", "to", "from", "near", "at")
# invented names (two or three syllables, ~5,000 of them): most are rare or unseen in training, so their
# entity type can only come from the context, as for the new names of a real test set
SYLLABLES = ("ka", "lo", "mi", "ra", "tu", "ve", "no", "shi", "be", "da", "zo", "ri", "an", "el", "or", "us", "qui")
OTHER_PREPS = ("with", "for")


class _Sentence:
    """Words and their three tag sequences, built phrase by phrase."""

    def __init__(self):
        self.words: list[str] = []
        self.tags = {task: [] for task in TAGS}

    def add(self, words, pos, chunk: str | None, ner: str | None = None) -> None:
        """`words` with their parts of speech; `chunk` / `ner`: the phrase's type (B- then I-), None = O."""
        for i, (word, p) in enumerate(zip(words, pos)):
            self.words.append(word)
            self.tags["pos"].append(p)
            self.tags["chunk"].append("O" if chunk is None else f"{'B' if i == 0 else 'I'}-{chunk}")
            self.tags["ner"].append("O" if ner is None else f"{'B' if i == 0 else 'I'}-{ner}")


def _pick(rng: np.random.Generator, options):
    return options[rng.integers(len(options))]


def _topic_word(rng, table: dict, topic: str, mix: float) -> str:
    """A word of `topic`'s list, or (probability `mix`) of another topic's."""
    if rng.random() < mix:
        topic = _pick(rng, [t for t in TOPICS if t != topic])
    return _pick(rng, table[topic])


def _noun_phrase(s: _Sentence, rng, topic: str, mix: float) -> None:
    words, pos = [_pick(rng, DETS)], ["DET"]
    if rng.random() < 0.4:
        words.append(_topic_word(rng, ADJS, topic, mix))
        pos.append("ADJ")
    noun = _pick(rng, AMBIGUOUS) if rng.random() < 0.3 else _topic_word(rng, NOUNS, topic, mix)
    s.add(words + [noun], pos + ["NOUN"], "NP")


def _name(rng, known: tuple[str, ...], invented: float) -> str:
    """One of `known`, or (probability `invented`) a made-up name."""
    if rng.random() >= invented:
        return _pick(rng, known)
    return "".join(_pick(rng, SYLLABLES) for _ in range(rng.integers(2, 4)))


def _person(s: _Sentence, rng, invented: float) -> None:
    if rng.random() < 0.5:  # an ambiguous name alone is a person here
        s.add([_name(rng, PLACES, invented)], ["PROPN"], "NP", "PER")
    else:
        s.add([_name(rng, FIRST, invented), _name(rng, LAST + PLACES, invented)], ["PROPN", "PROPN"], "NP", "PER")


def _organisation(s: _Sentence, rng, invented: float) -> None:
    s.add([_name(rng, PLACES + ORG_NAMES, invented), _pick(rng, ORG_SUFFIXES)], ["PROPN", "PROPN"], "NP", "ORG")


def _argument(s: _Sentence, rng, topic: str, mix: float, invented: float) -> None:
    """A subject or an object: a common noun phrase, a person or an organisation."""
    r = rng.random()
    if r < 0.5:
        _noun_phrase(s, rng, topic, mix)
    elif r < 0.8:
        _person(s, rng, invented)
    else:
        _organisation(s, rng, invented)


def sentence(rng: np.random.Generator, topic: str, mix: float, invented: float) -> _Sentence:
    s = _Sentence()
    if rng.random() < 0.25:  # a pronoun takes the verb's base form: an ambiguous word is a verb here
        s.add([_pick(rng, PRONOUNS)], ["PRON"], "NP")
        s.add([_pick(rng, AMBIGUOUS)], ["VERB"], "VP")
    else:
        _argument(s, rng, topic, mix, invented)
        if rng.random() < 0.4:
            s.add(["will", _pick(rng, AMBIGUOUS)], ["AUX", "VERB"], "VP")
        else:
            s.add([_topic_word(rng, VERBS, topic, mix)], ["VERB"], "VP")
    if rng.random() < 0.7:
        _argument(s, rng, topic, mix, invented)
    for _ in range(rng.integers(0, 3)):
        if rng.random() < 0.6:
            s.add([_pick(rng, LOC_PREPS)], ["PREP"], "PP")
            place = [_name(rng, PLACES + CITIES, invented)] + (["city"] if rng.random() < 0.25 else [])
            s.add(place, ["PROPN"] * len(place), "NP", "LOC")  # "city" here is a name's part, elsewhere a noun
        else:
            s.add([_pick(rng, OTHER_PREPS)], ["PREP"], "PP")
            _argument(s, rng, topic, mix, invented)
    if rng.random() < 0.3:
        s.add([_pick(rng, ADVERBS)], ["ADV"], "ADVP")
    s.add(["."], ["PUNCT"], None)
    return s


def corpus(n: int, seed: int, split: str, mix: float, invented: float
           ) -> tuple[list[list[str]], dict[str, list[list[str]]], list[int]]:
    """(words per sentence, {task: tags per sentence}, topic per sentence) of one split."""
    rng = np.random.default_rng([seed, 31_337, SPLITS.index(split)])
    words, tags, topics = [], {task: [] for task in TAGS}, []
    for _ in range(n):
        topic = int(rng.integers(len(TOPICS)))
        s = sentence(rng, TOPICS[topic], mix, invented)
        words.append(s.words)
        for task in TAGS:
            tags[task].append(s.tags[task])
        topics.append(topic)
    return words, tags, topics


def tag_ids(sentences: list[list[str]], names: tuple[str, ...], max_len: int) -> torch.Tensor:
    """long [N, max_len]: the tag ids of each sentence's first max_len words, -1 after them."""
    index = {name: i for i, name in enumerate(names)}
    out = torch.full((len(sentences), max_len), -1, dtype=torch.long)
    for row, tags in enumerate(sentences):
        ids = [index[t] for t in tags[:max_len]]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


class TextTagging(FittedVocabulary, DataModule):
    name = "text_tagging"

    def __init__(self, n_train: int = 2000, n_val: int = 500, n_test: int = 1000, seed: int = 0,
                 topic_mix: float = 0.25, invented_names: float = 0.5, max_len: int = 24,
                 label_fraction: Mapping[str, float] | None = None,
                 **loader):
        super().__init__(**loader)
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.seed, self.topic_mix, self.invented_names = int(seed), float(topic_mix), float(invented_names)
        self.label_fraction = {str(k): v for k, v in dict(label_fraction or {}).items()}
        problems = [f"data.label_fraction.{task}={f}: needs a target of text_tagging ({', '.join(TARGETS)}) and a "
                    f"number in [0, 1] (the fraction of training sentences that keep their labels)"
                    for task, f in self.label_fraction.items()
                    if task not in TARGETS or isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1]
        for key, value in self.sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"data.n_{key}={value}: must be an integer >= 1")
        if problems:
            raise ConfigError(problems)
        self.tokenizer = Tokenizer(level="word", max_len=max_len)
        self._raw: dict | None = None

    def _load(self) -> None:  # FittedVocabulary: the vocabulary is fitted as the corpus is generated
        self._generate()

    @property
    def full_spec(self) -> DataSpec:
        self._generate()
        n = self.tokenizer.max_len
        return DataSpec(modalities={"text": ModalityInfo("text", (n,), {"vocab_size": self.tokenizer.vocab_size,
                                                                        "max_len": n})},
                        targets=dict(TARGETS))

    def _generate(self) -> dict:
        if self._raw is None:
            self._raw = {split: corpus(self.sizes[split], self.seed, split, self.topic_mix,
                                              self.invented_names) for split in SPLITS}
            self.fit_vocabulary([" ".join(words) for words in self._raw["train"][0]])
        return self._raw

    def build(self) -> dict[str, TensorDictDataset]:
        splits = {}
        for split, (words, tags, topics) in self._generate().items():
            n = len(words)
            targets = {task: tag_ids(tags[task], TAGS[task], self.tokenizer.max_len) for task in TAGS}
            targets["topic"] = torch.tensor(topics, dtype=torch.long)
            masks = {} if split != "train" else {task: label_mask(n, float(f), self.seed, split, task)
                                                 for task, f in self.label_fraction.items() if f < 1}
            targets.update({task: hide_unlabelled(targets[task], mask) for task, mask in masks.items()})
            splits[split] = TensorDictDataset(inputs={"text": self.tokenizer.encode([" ".join(w) for w in words])},
                                              targets=targets, label_mask=masks or None)
        return splits

    def tagged_words(self, split: str) -> tuple[list[list[str]], list[list[int]]]:
        words = self._generate()[split][0]  # one token per word: the words that fit are positions 0, 1, ...
        return words, [list(range(min(len(w), self.tokenizer.max_len))) for w in words]
