"""Tags per word, aligned with the token ids of a text (mtlrun.tasks.Tagging's targets).

A text's words are its whitespace-separated pieces, as CoNLL files and a table's `type: tags` column give them,
one tag per word. The tokenizer may cut a word into several tokens: mtlrun's word-level Tokenizer splits
punctuation off ("U.S." is four tokens), a transformers tokenizer cuts words into sub-words and adds special
tokens. As Hugging Face's token-classification examples do, the first token of each word carries its tag and
the others get `IGNORE` (-1: no loss, no metric); predictions are read back at the same first tokens
(`word_starts`). Words cut off by the tokenizer's max_len have no token, hence no tag and no prediction.
"""

from __future__ import annotations

import re

import torch

IGNORE = -1
_WORD = re.compile(r"\S+")


def split_words(text: str) -> list[str]:
    return text.split()


def word_starts(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """Per text, the token position of each word's first token, for the words that fit in `max_len`.

    `tokenizer`: a fitted mtlrun.data.text.Tokenizer (word level), or a transformers fast tokenizer (whose
    offsets say which characters each token covers)."""
    if hasattr(tokenizer, "vocab") and hasattr(tokenizer, "tokenize") and hasattr(tokenizer, "state_dict"):
        out = []
        for text in texts:
            starts, position = [], 0
            for word in split_words(text):  # the text's tokens are its words' tokens, in order
                if position >= max_len:
                    break
                starts.append(position)
                position += len(tokenizer.tokenize(word))
            out.append(starts)
        return out
    encoded = tokenizer(list(texts), truncation=True, max_length=max_len, return_offsets_mapping=True)
    out = []
    for text, offsets in zip(texts, encoded["offset_mapping"]):
        starts, token = [], 0
        for match in _WORD.finditer(text):
            # the first token that covers a character of the word (special tokens cover none)
            while token < len(offsets) and not (offsets[token][1] > offsets[token][0]
                                                and offsets[token][1] > match.start()):
                token += 1
            if token >= len(offsets) or offsets[token][0] >= match.end():
                break  # truncated (or a word the tokenizer drops entirely, which ends the alignment)
            starts.append(token)
        out.append(starts)
    return out


def complete_scheme(tags: set[str]) -> set[str]:
    """`tags` plus, for each entity type of a prefix tag ('B-PER'), the scheme's other tags of it: I- with B-,
    and E- and S- too when the tags use them (BIOES). A type whose I- tag the train split never has (every
    entity one word long) still gets it, rather than a val sentence's I-PER being an unknown tag."""
    prefixed = [t for t in tags if len(t) > 2 and t[1] == "-" and t[0] in "BIES"]
    prefixes = "BIES" if any(t[0] in "ES" for t in prefixed) else "BI"
    return set(tags) | {f"{p}-{t[2:]}" for t in prefixed for p in prefixes}


def tag_tensor(tags: list[list[int] | None], starts: list[list[int]], max_len: int) -> torch.Tensor:
    """long [N, max_len]: tag ids at each word's first token, IGNORE elsewhere (and for a None row)."""
    out = torch.full((len(tags), max_len), IGNORE, dtype=torch.long)
    for row, (ids, positions) in enumerate(zip(tags, starts)):
        if ids is not None and positions:
            out[row, positions] = torch.tensor(ids[: len(positions)], dtype=torch.long)
    return out


def words_of_predictions(tags: torch.Tensor, starts: list[list[int]]) -> list[list[int]]:
    """Per text, the predicted tag id of each word (from `tags` [N, L], read at each word's first token)."""
    return [tags[row, positions].tolist() for row, positions in enumerate(starts)]

