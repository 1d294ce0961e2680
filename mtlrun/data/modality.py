"""Whole-modality dropout for training (`data.modality_dropout`), on the device, without host syncs.

Each sample loses each of its present modalities with probability p, independently, but never all of
them: a sample left with none gets back one of the modalities it had, chosen at random. Dropping only
clears the modality mask; the fusions ignore masked modalities, so the input itself need not change.
Draws come from torch's global RNG (on the batch's device), which checkpoints carry: resume stays exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def full_mask(inputs: dict[str, torch.Tensor], mask: dict[str, torch.Tensor] | None,
              modalities: Sequence[str]) -> dict[str, torch.Tensor]:
    """The modality mask with an all-True entry for every modality the batch does not mask."""
    mask = mask or {}
    return {m: mask[m] if mask.get(m) is not None else
            torch.ones(len(inputs[m]), dtype=torch.bool, device=inputs[m].device) for m in modalities}


def drop_modalities(batch: dict, p: float) -> dict:
    inputs = batch["inputs"]
    names = list(inputs)
    if p <= 0 or len(names) < 2:
        return batch
    had = torch.stack(list(full_mask(inputs, batch.get("modality_mask"), names).values()), dim=1)  # [B, M]
    size, device = had.shape[0], had.device
    keep = had & (torch.rand(size, len(names), device=device) >= p)
    # rows that lost everything get back the modality with the largest random score among those they had
    rescue = torch.rand(size, len(names), device=device).masked_fill(~had, -1.0).argmax(dim=1)
    empty = ~keep.any(dim=1) & had.any(dim=1)
    keep = keep | (empty[:, None] & (torch.arange(len(names), device=device) == rescue[:, None]))
    return {**batch, "modality_mask": {m: keep[:, i] for i, m in enumerate(names)}}
