"""Several modalities in one model: per-modality encoders + a feature fusion, as one encoder.

`FusedEncoder` is what a sharing architecture gets from `make_encoder()` when the data has several
modalities: it reads a `MultiModalInput` (the inputs and the modality mask), encodes each modality with
its own encoder (`backbone.<kind>`), fuses them (`fusion=`), and runs the fused vector through a small MLP
trunk (`fusion.trunk`). It offers the stage API of mtlrun.models.backbone.base.StagedEncoder, so every
`arch` applies unchanged: stage 0 is encode + fuse, stage i > 0 is trunk layer i. Stage outputs are
carried as [B, C, 1, 1] feature maps, the layout the stage-wise architectures work on (a 1 x 1
convolution on them is a linear layer on the fused vector).

Late fusion (`fusion=late`, mtlrun.models.fusion.late.LateFusion) needs none of this: it builds one
complete multi-task model per modality and combines their predictions.
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrun.data.modality import full_mask
from mtlrun.models.base import MultiModalInput
from mtlrun.models.backbone.base import StagedEncoder


class EncodeAndFuse(nn.Module):
    def __init__(self, encoders: dict[str, nn.Module], fusion: nn.Module):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion

    def forward(self, x: MultiModalInput) -> torch.Tensor:
        inputs = x.inputs
        # encode(), not forward(): its vector is the one a fusion combines for every encoder (a dense
        # backbone's forward is a map), and its tokens (views or already computed) are there for those
        # fusions that read them
        encoded = {m: enc.encode(inputs[m]) for m, enc in self.encoders.items()}
        fused = self.fusion(encoded, full_mask(inputs, x.mask, list(self.encoders)))
        return fused[:, :, None, None]


class TrunkLayer(nn.Module):
    """Linear + ReLU on a [B, C, 1, 1] map (the fused vector in the stage layout)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.linear = nn.Linear(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x.flatten(1)))[:, :, None, None]


class FusedEncoder(StagedEncoder):
    def __init__(self, encoders: dict[str, nn.Module], fusion: nn.Module):
        super().__init__()
        widths = [fusion.out_dim, *fusion.trunk]
        self.stages = nn.ModuleList([EncodeAndFuse(encoders, fusion)] +
                                    [TrunkLayer(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.stage_channels = tuple(widths)
        self.in_channels = fusion.out_dim  # what the stage-wise gates read when nothing is shared below
        self.project = nn.Flatten()
        self.out_dim = widths[-1]

    @property
    def encoders(self) -> nn.ModuleDict:
        return self.stages[0].encoders

    @property
    def fusion(self) -> nn.Module:
        return self.stages[0].fusion
