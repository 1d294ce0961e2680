"""A transformers tokenizer from the local cache for a table's text column (`tokenizer: NAME`; pip install
"mtlrun[hf]"), so that `backbone/text=hf backbone.text.tokenizer=model` reads the ids its pretrained embeddings
were trained on.

mtlrun's text layout keeps 0 for padding (mtlrun.data.base.ModalityInfo): where a tokenizer pads with another
id, that id and 0 trade places in the stored ids (`swap_pad`), and the hf encoder swaps them back. Nothing is
downloaded: `AutoTokenizer.from_pretrained(NAME, local_files_only=True)` reads the Hugging Face hub cache
(mtlrun.hub) or a local folder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlrun.checks import import_extra
from mtlrun.errors import UsageError
from mtlrun.hub import from_cache, repo_cache_dir

_loaded: dict[str, object] = {}


def load_tokenizer(name: str, key: str):
    """The tokenizer `name` (a hub id or a folder) from the local disk, or a UsageError naming `key`."""
    if name not in _loaded:
        transformers = import_extra("transformers", "hf", f"{key}.tokenizer")
        try:
            tokenizer = from_cache(transformers.AutoTokenizer, name)
        except (OSError, ValueError) as exc:
            raise UsageError(f"{key}.tokenizer={name}: not in the local cache, and mtlrun never downloads; looked in "
                             f"{repo_cache_dir(name)} (HF_HUB_CACHE, or HF_HOME/hub); fetch it where there is a "
                             f"network (`huggingface-cli download {name}`) or give a local folder") from exc
        if tokenizer.pad_token_id is None:
            raise UsageError(f"{key}.tokenizer={name}: the tokenizer has no padding token")
        _loaded[name] = tokenizer
    return _loaded[name]


def swap_pad(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """`ids` with `pad_id` and 0 traded (its own inverse): padding becomes 0 and back."""
    if not pad_id:
        return ids
    return torch.where(ids == pad_id, 0, torch.where(ids == 0, pad_id, ids))


def encode(tokenizer, texts: Sequence[str], max_len: int) -> torch.Tensor:
    """LongTensor [N, max_len]: the tokenizer's ids (special tokens included), truncated, padded with 0."""
    ids = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len,
                    return_tensors="np")["input_ids"]
    return swap_pad(torch.from_numpy(ids).long(), int(tokenizer.pad_token_id))
