"""Self-attention over modality tokens:

    t_m = W_m x_m + b_m + e_m        (one token per modality, e_m a learned modality embedding)
    H = TransformerEncoder([t_1, ..., t_M])   (missing modalities masked as keys)
    out = mean of H over the present modalities

Transformer self-attention (Vaswani et al. 2017, "Attention Is All You Need") with each modality's pooled
vector as one token. Options: layers, heads (must divide dim), ff_mult (feed-forward width =
ff_mult * dim), dropout.
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrun.models.fusion.base import Projected, key_padding, masked_mean, transformer


class Attention(Projected):
    """A transformer over one token per modality; the mean of its outputs over the present ones."""

    def __init__(self, dims, token_dims, dim=128, trunk=(256,), layers: int = 1, heads: int = 4,
                 ff_mult: int = 2, dropout: float = 0.0):
        super().__init__(dims, token_dims, dim, trunk)
        self.embedding = nn.Parameter(torch.randn(len(self.modalities), self.dim) * 0.02)
        self.encoder = transformer(self.dim, layers, heads, ff_mult, dropout)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        h, present = self.projections(encoded, mask)
        tokens = h + self.embedding  # a missing modality's token is its embedding alone, masked as a key
        return masked_mean(self.encoder(tokens, src_key_padding_mask=key_padding(present)), present)
