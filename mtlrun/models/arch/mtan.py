"""Multi-Task Attention Network (Liu et al. 2019): one shared encoder, per-task soft attention per stage.

For task t and stage j with shared output f_j:

    mask_j^t = sigmoid(BN(conv1x1(ReLU(BN(conv1x1([f_j, g_j^t(a_{j-1}^t)]))))))   (f_j alone at j = 0)
    a_j^t    = mask_j^t * f_j

where g_j^t (conv3x3-BN-ReLU, then max-pooled to f_j's resolution, or bilinearly upsampled to it in the
decoder stages of a dense encoder, as in the paper's SegNet) carries the task's previous attended features
to stage j. Task t's prediction is head_t(project_t(a_last^t)), with its own copy of the encoder's
projection. As in the paper the mask reads the shared features it multiplies; we have stage outputs only,
so f_j plays both the paper's u_j (first layer of block j) and p_j (last layer).

`reduction` divides the width of g and of the mask's hidden layer (at least 8 channels): 1 is the paper's
widths, the default 4 keeps the attention a fraction of a ResNet-50's cost.
The shared representation is the list of shared stage outputs [f_0, ..., f_last] the attention reads
(aliases of them: stage j + 1 reads f_j too, see `_common.tap`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from mtlrun.models.base import MultiTaskModel
from mtlrun.models.arch._common import check_range, make_heads, staged, tap


def _conv_bn(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)]


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """Max-pool down to `size` (encoder stages), or upsample bilinearly (decoder stages of a dense encoder)."""
    if x.shape[-2:] == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_max_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class TaskAttention(nn.Module):
    """One task's attention over all stages of the shared encoder."""

    def __init__(self, stage_channels: tuple[int, ...], reduction: int):
        super().__init__()
        width = [min(c, max(8, c // reduction)) for c in stage_channels]
        self.masks, self.bridges = nn.ModuleList(), nn.ModuleList()
        for j, c in enumerate(stage_channels):
            c_in = c if j == 0 else c + width[j]
            self.masks.append(nn.Sequential(*_conv_bn(c_in, width[j], 1), nn.ReLU(inplace=True),
                                            *_conv_bn(width[j], c, 1), nn.Sigmoid()))
            if j > 0:
                self.bridges.append(nn.Sequential(*_conv_bn(stage_channels[j - 1], width[j], 3),
                                                  nn.ReLU(inplace=True)))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        attended = None
        for j, f in enumerate(features):
            if attended is None:
                mask_in = f
            else:
                carried = _resize(self.bridges[j - 1](attended), f.shape[-2:])
                mask_in = torch.cat([f, carried], dim=1)
            attended = self.masks[j](mask_in) * f
        return attended


class MTAN(MultiTaskModel):
    def __init__(self, make_encoder: Callable[[], nn.Module], tasks: dict, modality: str | None, reduction: int = 4,
                 head_hidden: int = 0, head_dropout: float = 0.0):
        super().__init__()
        self.modality = modality
        check_range("arch.reduction", reduction, 1)
        encoder = staged(make_encoder(), "mtan")
        self.stages = encoder.stages  # shared; each task gets its own projection below
        names = list(tasks)
        projects = [encoder.project] + [staged(make_encoder(), "mtan").project for _ in names[1:]]
        self.projects = nn.ModuleDict(dict(zip(names, projects)))
        self.attention = nn.ModuleDict({name: TaskAttention(encoder.stage_channels, reduction) for name in names})
        self.heads = make_heads(tasks, encoder, head_hidden, head_dropout, arch="mtan")

    def task_modules(self, task):
        return [self.heads[task], self.attention[task], self.projects[task]]

    def forward(self, inputs, return_shared=False, modality_mask=None):
        x, features = self.encoder_input(inputs, modality_mask), []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        features = [tap(f) for f in features]  # stage j + 1 reads f_j too: see `tap`
        preds = {name: self.heads[name](self.projects[name](attention(features)))
                 for name, attention in self.attention.items()}
        return (preds, features) if return_shared else preds
