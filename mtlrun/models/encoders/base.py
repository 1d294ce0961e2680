"""The stage API every encoder offers to the sharing architectures.

An encoder is `stages` (an `nn.ModuleList` applied in sequence, each mapping a feature map to the next)
followed by `project` (the last feature map -> [B, out_dim]). Stage-wise architectures take it apart:
cross-stitch mixes per-task copies between stages, MTAN attends to each stage's output, MMoE / PLE build
their experts from the later stages. A user encoder works with every `arch` once it sets these attributes;
with plain `hps` (and `soft`) only `forward` and `out_dim` are needed.
"""

from __future__ import annotations

import torch
from torch import nn


class StagedEncoder(nn.Module):
    """`forward(x) = project(stages[-1](... stages[0](x)))`.

    Subclasses set `stages` (nn.ModuleList), `stage_channels` (channels of each stage's output),
    `in_channels` (channels of the input), `project` (nn.Module) and `out_dim` (int).
    """

    stages: nn.ModuleList
    stage_channels: tuple[int, ...]
    in_channels: int
    project: nn.Module
    out_dim: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.project(x)
