"""Whole-modality dropout for training (`data.modality_dropout`), on the device, without host syncs.

Each sample loses each of its present modalities with probability p, independently, but never all of
them: a sample left with none gets back one of the modalities it had, chosen at random. Dropping only
clears the modality mask; the fusions ignore masked modalities, so the input itself need not change.
Draws come from torch's global RNG (on the batch's device), which checkpoints carry: resume stays exact.
"""

from __future__ import annotations

import torch


def drop_modalities(batch: dict, p: float) -> dict:
    inputs = batch["inputs"]
    names = list(inputs)
    if p <= 0 or len(names) < 2:
        return batch
    first = inputs[names[0]]
    size, device = len(first), first.device
    given = batch.get("modality_mask") or {}
    had = torch.stack([given[m] if m in given else torch.ones(size, dtype=torch.bool, device=device)
                       for m in names], dim=1)  # [B, M]
    keep = had & (torch.rand(size, len(names), device=device) >= p)
    # rows that lost everything get back the modality with the largest random score among those they had
    rescue = torch.rand(size, len(names), device=device).masked_fill(~had, -1.0).argmax(dim=1)
    empty = ~keep.any(dim=1) & had.any(dim=1)
    keep = keep | (empty[:, None] & (torch.arange(len(names), device=device) == rescue[:, None]))
    return {**batch, "modality_mask": {m: keep[:, i] for i, m in enumerate(names)}}
