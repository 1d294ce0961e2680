"""Early fusion: one joint transformer over every modality's token sequence.

    s_m = tokens_m W_m + e_m          (per-position features before pooling, projected to dim, plus a
                                       learned modality embedding e_m)
    H = TransformerEncoder([s_1; s_2; ...; s_M])   (one sequence; missing modalities and padded tokens
                                                    masked as keys)
    out = mean of H over the real tokens of the present modalities

Early (feature-level) vs late (decision-level) fusion: Snoek, Worring & Smeulders 2005, "Early versus late
fusion in semantic video analysis"; the joint ("single-stream") transformer over concatenated modality
sequences as in UNITER (Chen et al. 2020). Within a modality the tokens carry only the positional
information the encoder put in them. Every token attends to every other, so the cost is quadratic in the
total number of tokens. Options: layers, heads (must divide dim), ff_mult (feed-forward width =
ff_mult * dim), dropout.
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrun.models.fusion.base import Fusion, clean_tokens, key_padding, masked_mean, transformer


class Early(Fusion):
    """A joint transformer over the concatenated token sequences of the present modalities."""

    needs_tokens = True

    def __init__(self, dims, token_dims, dim=128, trunk=(256,), layers: int = 1, heads: int = 4,
                 ff_mult: int = 2, dropout: float = 0.0):
        super().__init__(dims, token_dims, dim, trunk)
        self.project = nn.ModuleDict({m: nn.Linear(self.token_dims[m], self.dim) for m in self.modalities})
        # the encoders' token spaces are unrelated; the embedding tells the joint attention which is which
        self.embedding = nn.Parameter(torch.randn(len(self.modalities), self.dim) * 0.02)
        self.encoder = transformer(self.dim, layers, heads, ff_mult, dropout)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        sequences, valids = [], []
        for i, m in enumerate(self.modalities):
            tokens, valid = clean_tokens(encoded[m], mask[m].bool())
            sequences.append(self.project[m](tokens) + self.embedding[i])
            valids.append(valid)
        x, valid = torch.cat(sequences, 1), torch.cat(valids, 1)
        return masked_mean(self.encoder(x, src_key_padding_mask=key_padding(valid)), valid)
