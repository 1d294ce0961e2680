"""Gated Multimodal Unit (Arevalo et al. 2017, "Gated Multimodal Units for Information Fusion"),
generalised from 2 to M modalities:

    h_m = tanh(W_m x_m)
    z = softmax over the present m of (W_z [x_1; ...; x_M])_m     (per feature: z is [B, M, dim])
    out = sum_m z_m * h_m

With two modalities and one logit fixed at 0 this is the paper's sigmoid gate z h_1 + (1 - z) h_2.
Missing x_m are zeroed in the gate input and get gate 0.
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrun.models.fusion.base import Fusion, masked_softmax, present_matrix, zero_missing


class Gated(Fusion):
    """tanh features of each modality mixed per feature by a softmax gate over the present ones."""

    def __init__(self, dims, token_dims, dim=128, trunk=(256,)):
        super().__init__(dims, token_dims, dim, trunk)
        self.hidden = nn.ModuleDict({m: nn.Linear(d, self.dim) for m, d in self.dims.items()})
        self.gate = nn.Linear(sum(self.dims.values()), len(self.modalities) * self.dim)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        xs = [zero_missing(encoded[m].vector, mask[m].bool()) for m in self.modalities]
        h = torch.stack([torch.tanh(self.hidden[m](x)) for m, x in zip(self.modalities, xs)], 1)
        logits = self.gate(torch.cat(xs, 1)).view(h.shape)
        present = present_matrix(mask, self.modalities).unsqueeze(-1).expand(h.shape)
        return (masked_softmax(logits, present, 1).to(h.dtype) * h).sum(1)
