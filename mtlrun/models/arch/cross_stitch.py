"""Cross-stitch networks (Misra et al. 2016): one encoder per task, linearly mixed between stages.

After every stage but the last, the T task streams are replaced by learned combinations of each other:
x_t <- sum_s alpha[t, s] * x_s. `alpha` is a T x T matrix per stage (`per_channel=false`, the paper's
unit) or T x T per stage and channel (`per_channel=true`). It starts at `self_weight` on the diagonal and
(1 - self_weight) / (T - 1) elsewhere; `self_weight=1` starts from independent per-task networks.
The paper trains alpha with a larger learning rate than the networks; here it uses the optimizer's.

Every task's last stage, projection and head see only that task's mixed stream, so they are the task's
own parameters; the earlier stages and the units are shared (each task reads every stream through the
units). The shared representation is the list of mixed streams that enter the last stage, one per task.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtlrun.models.base import MultiTaskModel
from mtlrun.models.arch._common import make_heads, staged


class CrossStitchUnit(nn.Module):
    def __init__(self, num_tasks: int, channels: int, self_weight: float, per_channel: bool):
        super().__init__()
        other = (1.0 - self_weight) / (num_tasks - 1) if num_tasks > 1 else 0.0
        alpha = torch.full((num_tasks, num_tasks), other)
        alpha.fill_diagonal_(self_weight if num_tasks > 1 else 1.0)
        self.alpha = nn.Parameter(alpha[..., None].repeat(1, 1, channels if per_channel else 1))

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        """[T, B, C, ...] -> [T, B, C, ...]."""
        alpha = self.alpha.to(streams.dtype)
        alpha = alpha.view(*alpha.shape, *([1] * (streams.dim() - 3)))  # [T, T, C|1, 1, ...]
        return torch.einsum("ts...,sb...->tb...", alpha, streams)


class CrossStitch(MultiTaskModel):
    def __init__(self, make_encoder: Callable[[], nn.Module], tasks: dict, modality: str | None,
                 self_weight: float = 0.9, per_channel: bool = False, head_hidden: int = 0,
                 head_dropout: float = 0.0):
        super().__init__()
        self.modality = modality
        self.encoders = nn.ModuleDict({name: staged(make_encoder(), "cross_stitch", min_stages=2)
                                       for name in tasks})
        first = next(iter(self.encoders.values()))
        self.units = nn.ModuleList([CrossStitchUnit(len(tasks), c, float(self_weight), bool(per_channel))
                                    for c in first.stage_channels[:-1]])
        self.heads = make_heads(tasks, first, head_hidden, head_dropout, arch="cross_stitch")

    def task_modules(self, task):
        encoder = self.encoders[task]
        return [self.heads[task], encoder.stages[-1], encoder.project]

    def forward(self, inputs, return_shared=False, modality_mask=None):
        x = self.encoder_input(inputs, modality_mask)
        encoders = list(self.encoders.values())
        streams = [x] * len(encoders)
        for i, unit in enumerate(self.units):
            mixed = unit(torch.stack([enc.stages[i](s) for enc, s in zip(encoders, streams)]))
            streams = list(mixed.unbind(0))
        preds = {name: self.heads[name](enc.project(enc.stages[-1](s)))
                 for (name, enc), s in zip(self.encoders.items(), streams)}
        return (preds, streams) if return_shared else preds
