"""What every encoder offers: a vector per sample, a token sequence for attention fusions, and (for the
stage-wise sharing architectures) the stage API.

Every encoder maps its modality's batch (layouts in mtlrun.data.base.ModalityInfo) to a fixed-size vector
[B, out_dim] with `forward`, and with `encode` to `Encoded(vector, tokens, token_mask)`: the same vector
plus a sequence [B, L, token_dim] (positions of a text, time steps of audio, cells of an image feature
map) that the attention-based fusions read; `token_mask` [B, L] is True where a token is real (None: all
are). An encoder is built by `build(cfg.backbone.<kind>, **ModalityInfo.args)`.

Stage API: `stages` (an `nn.ModuleList` applied in sequence, each mapping a feature map to the next)
followed by `project` (the last feature map -> [B, out_dim]). Stage-wise architectures take it apart:
cross-stitch mixes per-task copies between stages, MTAN attends to each stage's output, MMoE / PLE build
their experts from the later stages. A user encoder works with every `arch` once it sets these attributes;
with plain `hps` (and `soft`) only `forward`, `encode`, `out_dim` and `token_dim` are needed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class Encoded(NamedTuple):
    vector: torch.Tensor  # [B, out_dim]
    tokens: torch.Tensor  # [B, L, token_dim]
    token_mask: torch.Tensor | None  # [B, L] bool, True = a real token; None = all real


class Encoder(nn.Module):
    """Base of every encoder: subclasses set `out_dim` and `token_dim` and implement `forward`.

    The default `encode` offers the vector itself as a one-token sequence; encoders with a natural
    sequence override it.
    """

    out_dim: int
    token_dim: int

    def encode(self, x: torch.Tensor) -> Encoded:
        vector = self(x)
        return Encoded(vector, vector.unsqueeze(1), None)


class StagedEncoder(Encoder):
    """`forward(x) = project(stages[-1](... stages[0](x)))`; tokens are the cells of the last feature map.

    Subclasses set `stages` (nn.ModuleList), `stage_channels` (channels of each stage's output),
    `in_channels` (channels of the input), `project` (nn.Module) and `out_dim` (int).
    """

    stages: nn.ModuleList
    stage_channels: tuple[int, ...]
    in_channels: int
    project: nn.Module

    @property
    def token_dim(self) -> int:
        return self.stage_channels[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(x))

    def encode(self, x: torch.Tensor) -> Encoded:
        features = self.features(x)
        tokens = features.flatten(2).transpose(1, 2) if features.dim() > 2 else features.unsqueeze(1)
        return Encoded(self.project(features), tokens, None)


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of values [B, N, D] over the valid [B, N] positions; zeros where none is valid. The invalid ones are
    filled with zeros first, not multiplied by the mask (0 * inf is nan): whatever they hold cannot leak in."""
    total = values.masked_fill(~valid.unsqueeze(-1), 0).sum(1)
    return total / valid.sum(1, keepdim=True).clamp(min=1).to(total.dtype)
