"""Metrics of sequence labelling (mtlrun.tasks.Tagging): token accuracy, and entity-level precision, recall
and F1 for BIO / IOB2 / BIOES tag sets exactly as seqeval computes them in its default (CoNLL) mode, or
macro-F1 over the tags for other tag sets (part of speech).

Entities follow seqeval's `get_entities` (default mode, prefix tags): whether a chunk ends before token i
and whether one starts at token i depend only on the tags at i - 1 and i (`end_of_chunk`,
`start_of_chunk` below, ported line by line), so they are two (C + 1) x (C + 1) lookup tables over the
tag ids (the extra id is the boundary, an 'O' before and after every sentence), and a batch's entities
come out of a few tensor operations with no loop over samples and no host sync. A chunk is (type, begin,
end); a prediction is a true positive where a gold chunk has the same type, begin and end, so each chunk
is matched at its end position. The state is per-type counts (true positive, predicted, gold), summed
over batches and DDP ranks; P/R/F1 are seqeval's micro averages (`f1_score(y_true, y_pred)`), 0 where a
denominator is 0 as seqeval's default zero_division gives.

Positions whose target is ignored (padding, a word's later sub-words) are dropped before the entities
are read: the labelled tokens of a sentence are packed to the left, so a sub-word between two words
never breaks an entity.
"""

from __future__ import annotations

import torch

from mtlrun.metrics import Metrics

# the prefixes of each scheme whose entities are counted; every other tag is 'O'
SCHEMES = {"bio": ("B", "I"), "bioes": ("B", "I", "E", "S")}


def split_tag(tag: str) -> tuple[str, str]:
    """(prefix, type) as seqeval reads a prefix tag: 'B-PER' -> ('B', 'PER'), 'O' -> ('O', '_')."""
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """seqeval.metrics.sequence_labeling.end_of_chunk: a chunk ended just before this token."""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag != "O" and prev_tag != "." and prev_type != type_


def start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """seqeval.metrics.sequence_labeling.start_of_chunk: a chunk starts at this token."""
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and tag != "." and prev_type != type_


def detect_scheme(tags: list[str]) -> str | None:
    """'bioes' or 'bio' when every tag is 'O' or '<prefix>-<TYPE>' of that scheme (BIO before BIOES), else None."""
    for name in ("bio", "bioes"):
        prefixes = SCHEMES[name]
        if any(t != "O" for t in tags) and all(
                t == "O" or (len(t) > 2 and t[1] == "-" and t[0] in prefixes) for t in tags):
            return name
    return None


def entity_spans(tags: list[str]) -> list[dict]:
    """The entities of one sentence's tags as seqeval's get_entities reads them: [{type, start, end}] (word
    indices, end inclusive); what `mtlrun predict` writes for a BIO / BIOES task."""
    out, prev, prev_type, begin = [], "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, type_ = split_tag(tag)
        if end_of_chunk(prev, prefix, prev_type, type_):
            out.append({"type": prev_type, "start": begin, "end": i - 1})
        if start_of_chunk(prev, prefix, prev_type, type_):
            begin = i
        prev, prev_type = prefix, type_
    return out


def entity_types(tags: list[str]) -> list[str]:
    return sorted({split_tag(t)[1] for t in tags if t != "O"})


class ChunkTables:
    """The lookup tables of seqeval's chunk rules over tag ids 0..C-1 and the boundary id C ('O')."""

    def __init__(self, tags: list[str]):
        parts = [split_tag(t) for t in tags] + [("O", "_")]
        self.types = entity_types(tags)
        index = {t: i for i, t in enumerate(self.types)}
        n = len(parts)
        self.end = torch.tensor([[end_of_chunk(p, c, pt, ct) for c, ct in parts] for p, pt in parts]).view(n, n)
        self.start = torch.tensor([[start_of_chunk(p, c, pt, ct) for c, ct in parts] for p, pt in parts]).view(n, n)
        # a chunk's type is its tags' type; a type seqeval reads from a non-entity tag ('O') never closes a chunk
        self.type_of = torch.tensor([index.get(t, len(self.types)) for _, t in parts])

    def to(self, device: torch.device) -> ChunkTables:
        self.end, self.start, self.type_of = (x.to(device) for x in (self.end, self.start, self.type_of))
        return self


def pack_left(tags: torch.Tensor, valid: torch.Tensor, fill: int) -> torch.Tensor:
    """`tags` [B, L] with the valid positions moved to the front of each row, in order; `fill` after them."""
    slot = torch.where(valid, valid.long().cumsum(1) - 1, tags.shape[1])  # invalid: an extra column, dropped
    out = torch.full((tags.shape[0], tags.shape[1] + 1), fill, dtype=tags.dtype, device=tags.device)
    return out.scatter(1, slot, torch.where(valid, tags, fill))[:, :-1]


def chunk_ends(tags: torch.Tensor, tables: ChunkTables) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For packed tags [B, L] (boundary id C after the words): (ends [B, L + 1], begins, types), where
    ends[b, i] says a chunk ends at word i - 1, begins[b, i] is its first word and types[b, i] its type."""
    boundary = tables.type_of.numel() - 1
    pad = torch.full((tags.shape[0], 1), boundary, dtype=tags.dtype, device=tags.device)
    prev, cur = torch.cat([pad, tags], 1), torch.cat([tags, pad], 1)  # [B, L + 1]: each pair of neighbours
    ends, starts = tables.end[prev, cur], tables.start[prev, cur]
    positions = torch.arange(cur.shape[1], device=tags.device).expand_as(cur)
    last_start = torch.where(starts, positions, 0).cummax(1).values  # seqeval's begin_offset starts at 0
    begins = torch.cat([torch.zeros_like(pad), last_start[:, :-1]], 1)  # the start in force before token i
    return ends, begins, tables.type_of[prev]


class TaggingMetrics(Metrics):
    """Token accuracy plus entity P/R/F1 (a BIO / BIOES tag set) or macro-F1 over the tags (any other)."""

    def __init__(self, tags: list[str], ignore_index: int = -1, scheme: str | None = None, decode=None):
        self.tags, self.ignore_index, self.scheme = list(tags), ignore_index, scheme
        self.decode = decode or (lambda pred: pred.argmax(-1))  # predictions [B, L, ...] -> tag ids [B, L]
        self.num_tags = len(self.tags)
        if scheme is None:
            self.names = ("accuracy", "macro_f1")
        else:
            self.names = ("f1", "precision", "recall", "accuracy")  # entity F1 first: what a monitor reads
            self.tables = ChunkTables(self.tags)
        self.higher_is_better = dict.fromkeys(self.names, True)

    def reset(self, device):
        c = self.num_tags
        self.confusion = torch.zeros(c, c, dtype=torch.long, device=device)
        if self.scheme is not None:
            self.tables.to(device)
            self.entities = torch.zeros(3, len(self.tables.types), dtype=torch.long, device=device)  # tp, pred, gold

    def valid(self, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        valid = target != self.ignore_index
        return valid if mask is None else valid & mask.view(-1, 1)

    def update(self, pred, target, mask):
        c = self.num_tags
        target = target.long()
        valid = self.valid(target, mask)
        guess = self.decode(pred)
        cell = torch.where(valid, target * c + guess, c * c)  # overflow bin for ignored tokens, dropped
        self.confusion += torch.bincount(cell.flatten(), minlength=c * c + 1)[: c * c].view(c, c)
        if self.scheme is not None:
            self.entities += self.entity_counts(guess, target, valid)

    def entity_counts(self, guess: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        n_types = len(self.tables.types)
        gold_end, gold_begin, gold_type = chunk_ends(pack_left(target, valid, self.num_tags), self.tables)
        pred_end, pred_begin, pred_type = chunk_ends(pack_left(guess, valid, self.num_tags), self.tables)
        gold_end &= gold_type < n_types
        pred_end &= pred_type < n_types
        hit = gold_end & pred_end & (gold_begin == pred_begin) & (gold_type == pred_type)

        def per_type(ends, types):
            return torch.bincount(torch.where(ends, types, n_types).flatten(), minlength=n_types + 1)[:n_types]

        return torch.stack([per_type(hit, gold_type), per_type(pred_end, pred_type), per_type(gold_end, gold_type)])

    def states(self):
        return [self.confusion] + ([self.entities] if self.scheme is not None else [])

    def compute(self):
        cm = self.confusion.double()
        total = cm.sum()
        if total == 0:
            return self.missing()
        out = {"accuracy": (cm.diag().sum() / total).item()}
        if self.scheme is None:
            tp, support, predicted = cm.diag(), cm.sum(1), cm.sum(0)
            f1 = 2 * tp / (support + predicted).clamp_min(1)
            out["macro_f1"] = f1[(support + predicted) > 0].mean().item()
            return out
        tp, predicted, gold = self.entities.sum(1).tolist()
        precision = tp / predicted if predicted else 0.0
        recall = tp / gold if gold else 0.0
        # seqeval: (1 + beta^2) P R / (beta^2 P + R), 0 when P + R is 0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.update(precision=precision, recall=recall, f1=f1)
        return out

    def entities_per_type(self) -> dict[str, dict[str, int]]:
        """{type: {tp, predicted, gold}} of everything seen (after the DDP sum): a per-type report."""
        return {t: dict(zip(("tp", "predicted", "gold"), col)) for t, col in
                zip(self.tables.types, self.entities.t().tolist())}
