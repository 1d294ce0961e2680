"""Sequence-labelling metrics (mtlrun.sequence_metrics) against seqeval's default (CoNLL) mode, on random and
hand-written tag sequences, malformed ones included (an I- without a B-, an E- after O, types changing
inside a chunk); batches split, padded, with sub-word positions ignored and state summed as DDP sums it."""

from __future__ import annotations

import math
import random

import pytest
import torch

from mtlrun.sequence_metrics import TaggingMetrics, detect_scheme, entity_spans

seqeval = pytest.importorskip("seqeval.metrics")

BIO = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
BIOES = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
HAND_WRITTEN = [  # (gold, predicted)
    (["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),
    (["O", "I-PER", "I-PER", "O"], ["B-PER", "I-PER", "O", "O"]),  # I- without B- starts a chunk
    (["B-PER", "I-LOC", "O"], ["B-PER", "I-PER", "O"]),  # the type changes inside: two chunks
    (["I-LOC", "B-LOC", "I-LOC"], ["I-LOC", "I-LOC", "I-LOC"]),
    (["B-ORG", "B-ORG", "I-ORG", "O", "I-PER"], ["B-ORG", "I-ORG", "I-ORG", "O", "B-PER"]),
    (["O", "O", "O"], ["B-PER", "O", "I-PER"]),
    (["B-LOC"], ["O"]),
    (["I-ORG", "O", "B-ORG", "I-ORG"], ["B-ORG", "O", "B-ORG", "I-ORG"]),
]
HAND_WRITTEN_BIOES = [
    (["B-PER", "E-PER", "S-LOC", "O"], ["B-PER", "E-PER", "S-LOC", "O"]),
    (["O", "E-PER", "O", "I-LOC", "E-LOC"], ["S-PER", "O", "B-LOC", "I-LOC", "E-LOC"]),  # E- after O
    (["B-PER", "I-PER", "O"], ["B-PER", "S-PER", "E-PER"]),  # a chunk never closed by E-
    (["S-LOC", "I-LOC", "E-LOC"], ["S-LOC", "B-LOC", "E-LOC"]),
]


def ours(pairs, tags, batch_size=3, extra_padding=2, subwords=False):
    """(P, R, F1) of TaggingMetrics over (gold, predicted) pairs fed as padded batches, optionally with an
    ignored position after each word (a word's later sub-word), two 'ranks' summed."""
    index = {t: i for i, t in enumerate(tags)}
    ranks = [TaggingMetrics(tags, scheme=detect_scheme(tags)) for _ in range(2)]
    for m in ranks:
        m.reset(torch.device("cpu"))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        width = max(len(g) for g, _ in chunk) * (2 if subwords else 1) + extra_padding
        target = torch.full((len(chunk), width), -1)
        guess = torch.randint(len(tags), (len(chunk), width))  # whatever is predicted where nothing counts
        for row, (gold, pred) in enumerate(chunk):
            for i, (g, p) in enumerate(zip(gold, pred)):
                j = 2 * i if subwords else i
                target[row, j], guess[row, j] = index[g], index[p]
        logits = torch.nn.functional.one_hot(guess, len(tags)).float()
        ranks[(start // batch_size) % 2].update(logits, target, None)
    merged = ranks[0]
    for a, b in zip(merged.states(), ranks[1].states()):
        a += b  # what reduce_over_ranks_ does
    values = merged.compute()
    return values["precision"], values["recall"], values["f1"]


def reference(pairs):
    gold, pred = [list(g) for g, _ in pairs], [list(p) for _, p in pairs]
    return (seqeval.precision_score(gold, pred), seqeval.recall_score(gold, pred), seqeval.f1_score(gold, pred))


def assert_agrees(pairs, tags, **kw):
    for mine, theirs in zip(ours(pairs, tags, **kw), reference(pairs)):
        assert math.isclose(mine, theirs, rel_tol=1e-12, abs_tol=1e-12), (ours(pairs, tags, **kw), reference(pairs))


@pytest.mark.filterwarnings("ignore::UserWarning")  # seqeval's zero-division warnings
@pytest.mark.parametrize("subwords", [False, True])
def test_hand_written_sequences_match_seqeval(subwords):
    for pairs, tags in ((HAND_WRITTEN, BIO), (HAND_WRITTEN_BIOES, BIOES)):
        assert_agrees(pairs, tags, subwords=subwords)
        for pair in pairs:  # one sentence alone: every per-sentence edge case on its own
            assert_agrees([pair], tags, subwords=subwords)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("tags", [BIO, BIOES], ids=["bio", "bioes"])
def test_random_sequences_match_seqeval(tags):
    rng = random.Random(0)
    for trial in range(40):
        pairs = []
        for _ in range(rng.randint(1, 9)):
            n = rng.randint(1, 8)
            gold = [rng.choice(tags) for _ in range(n)]  # uniform tags: most sequences are malformed
            pred = [g if rng.random() < 0.6 else rng.choice(tags) for g in gold]
            pairs.append((gold, pred))
        assert_agrees(pairs, tags, batch_size=rng.randint(1, 4), subwords=trial % 2 == 1)


def test_scheme_detection_and_macro_f1_otherwise():
    assert detect_scheme(BIO) == "bio" and detect_scheme(BIOES) == "bioes"
    assert detect_scheme(["NOUN", "VERB", "O"]) is None and detect_scheme(["O"]) is None
    pos = TaggingMetrics(["NOUN", "VERB", "DET"])
    assert pos.names == ("accuracy", "macro_f1")
    pos.reset(torch.device("cpu"))
    target = torch.tensor([[0, 1, 2, -1], [0, 0, -1, -1]])
    guess = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 2]])
    pos.update(torch.nn.functional.one_hot(guess, 3).float(), target, torch.tensor([True, True]))
    values = pos.compute()
    assert values["accuracy"] == pytest.approx(3 / 5)  # padding (-1) never counts
    f1 = [2 * 2 / (3 + 2), 2 * 1 / (1 + 3), 0.0]  # NOUN: 2 right, 3 gold, 2 predicted; VERB; DET never right
    assert values["macro_f1"] == pytest.approx(sum(f1) / 3)


def test_unlabelled_sentences_and_empty_splits():
    metrics = TaggingMetrics(BIO, scheme="bio")
    metrics.reset(torch.device("cpu"))
    assert all(math.isnan(v) for v in metrics.compute().values())  # nothing measured: missing, not 0
    target = torch.tensor([[1, 2, 0], [3, 0, 0]])
    wrong = torch.nn.functional.one_hot(torch.tensor([[0, 0, 0], [3, 0, 0]]), len(BIO)).float()
    metrics.update(wrong, target, torch.tensor([False, True]))  # the first sentence has no tags for this task
    values = metrics.compute()
    assert values["f1"] == 1.0 and values["accuracy"] == 1.0


def test_entity_spans_are_seqevals_entities():
    from seqeval.metrics.sequence_labeling import get_entities

    rng = random.Random(1)
    sequences = [g for pairs in (HAND_WRITTEN, HAND_WRITTEN_BIOES) for pair in pairs for g in pair]
    sequences += [[rng.choice(BIOES) for _ in range(rng.randint(1, 8))] for _ in range(200)]
    for tags in sequences:
        assert [(e["type"], e["start"], e["end"]) for e in entity_spans(tags)] == get_entities(tags)
