"""Corruptions of one modality for robustness evaluation (`mtlrun eval ... robustness.noise=...`).

`corrupt(batch, modality, kind, noise, level, generator)` returns the batch with `modality` degraded at
strength `level` (0 = untouched). Every draw comes from `generator` (on the batch's device), so a sweep
is a pure function of its seed. Noises by modality kind:

- image: `gaussian` (add N(0, level^2), in the input's units), `occlusion` (a square covering a `level`
  fraction of the image, per sample at a random place, set to 0)
- text: `swap` (each token swapped with the next with probability level; with the default character
  tokenizer these are character swaps), `drop` (each token deleted with probability level, the rest
  shifted left)
- audio: `white` (white noise with RMS = level x the clip's RMS: level 1 is 0 dB SNR), `dropout` (chunks
  of 64 samples silenced with probability level)
- tabular: `feature_dropout` (each feature set to 0 with probability level: the training mean of a
  standardised numeric feature, the `unknown` code of a categorical one)
- any kind: `missing` (each sample loses the modality with probability level: its modality mask is
  cleared and its input zeroed, so a model that ignores the mask sees a blank input)
"""

from __future__ import annotations

import torch

NOISES = {"image": ("gaussian", "occlusion"), "text": ("swap", "drop"), "audio": ("white", "dropout"),
          "tabular": ("feature_dropout",)}
ANY_KIND = ("missing",)
PROBABILITY_NOISES = ("swap", "drop", "dropout", "feature_dropout", "missing", "occlusion")
AUDIO_CHUNK = 64


def noises_for(kind: str) -> tuple[str, ...]:
    return (*NOISES.get(kind, ()), *ANY_KIND)


def _rand(shape, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=like.device)


def corrupt(batch: dict, modality: str, kind: str, noise: str, level: float,
            generator: torch.Generator) -> dict:
    if level == 0:
        return batch
    x = batch["inputs"][modality]
    size = len(x)
    mask = None
    if noise == "missing":
        gone = _rand(size, x, generator) < level
        x = torch.where(gone.view(-1, *[1] * (x.dim() - 1)), torch.zeros_like(x), x)
        had = (batch.get("modality_mask") or {}).get(modality)
        mask = ~gone if had is None else had & ~gone
    elif noise == "gaussian":
        x = x + level * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    elif noise == "occlusion":
        x = _occlude(x, level, generator)
    elif noise == "swap":
        x = _swap_tokens(x, level, generator)
    elif noise == "drop":
        x = _drop_tokens(x, level, generator)
    elif noise == "white":
        rms = x.float().pow(2).flatten(1).mean(1).sqrt().view(-1, *[1] * (x.dim() - 1))
        x = x + (level * rms * torch.randn(x.shape, generator=generator, device=x.device)).to(x.dtype)
    elif noise == "dropout":
        chunks = -(-x.shape[-1] // AUDIO_CHUNK)
        silent = _rand((*x.shape[:-1], chunks), x, generator) < level
        silent = silent.repeat_interleave(AUDIO_CHUNK, dim=-1)[..., : x.shape[-1]]
        x = x.masked_fill(silent, 0)
    elif noise == "feature_dropout":
        x = x.masked_fill(_rand(x.shape, x, generator) < level, 0)
    else:
        raise ValueError(f"unknown noise {noise!r}")
    out = {**batch, "inputs": {**batch["inputs"], modality: x}}
    if mask is not None:
        out["modality_mask"] = {**(batch.get("modality_mask") or {}), modality: mask}
    return out


def _occlude(x: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """[B, C, H, W]: zero a square of area ~level * H * W at a random place per sample."""
    height, width = x.shape[-2:]
    side_h = min(height, round((level ** 0.5) * height))
    side_w = min(width, round((level ** 0.5) * width))
    y0 = (_rand(len(x), x, generator) * (height - side_h + 1)).long()
    x0 = (_rand(len(x), x, generator) * (width - side_w + 1)).long()
    rows = torch.arange(height, device=x.device).view(1, -1, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, -1)
    block = ((rows >= y0.view(-1, 1, 1)) & (rows < (y0 + side_h).view(-1, 1, 1))
             & (cols >= x0.view(-1, 1, 1)) & (cols < (x0 + side_w).view(-1, 1, 1)))
    return x.masked_fill(block.unsqueeze(1), 0)


def _swap_tokens(ids: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """Swap token i with i + 1 (both real tokens) with probability level, swaps never overlapping."""
    real = ids != 0
    swap = (_rand(ids.shape, ids, generator) < level) & real
    swap[:, -1] = False
    swap[:, :-1] &= real[:, 1:]
    for shift in range(1, ids.shape[1]):  # a swap at i forbids one at i + 1; resolve left to right
        swap[:, shift] &= ~swap[:, shift - 1]
    index = torch.arange(ids.shape[1], device=ids.device).expand_as(ids).clone()
    index = torch.where(swap, index + 1, index)
    index[:, 1:] = torch.where(swap[:, :-1], index[:, 1:] - 1, index[:, 1:])
    return ids.gather(1, index)


def _drop_tokens(ids: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """Delete each real token with probability level; the kept ones move left, the tail is padding."""
    keep = (ids != 0) & (_rand(ids.shape, ids, generator) >= level)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    kept = ids.gather(1, order)
    count = keep.sum(1, keepdim=True)
    return kept.masked_fill(torch.arange(ids.shape[1], device=ids.device) >= count, 0)
