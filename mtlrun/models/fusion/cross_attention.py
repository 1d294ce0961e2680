"""Cross-modal attention: each modality's vector queries the other modalities' token sequences.

    q_m = W_m x_m + b_m
    K_m = [U_n tokens_n + c_n for every other modality n]   (missing modalities and padded tokens masked
                                                              as keys)
    o_m = LayerNorm(q_m + MultiheadAttention_m(q_m, K_m, K_m))
    out = mean of o_m over the present modalities

Directional cross-modal attention as in the Multimodal Transformer (Tsai et al. 2019, "Multimodal
Transformer for Unaligned Multimodal Language Sequences") and ViLBERT's co-attention (Lu et al. 2019), with
one pooled query per modality. The per-modality key projections' biases c_n double as modality embeddings.
A modality with no other present modality to attend to keeps LayerNorm(q_m). Options: heads (must divide
dim), dropout.
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrun.models.fusion.base import (Fusion, attention_options, clean_tokens, key_padding, masked_mean,
                                       present_matrix, zero_missing)


class CrossAttention(Fusion):
    """Each modality's pooled vector attends to the other modalities' tokens; the mean over the present."""

    needs_tokens = True
    min_modalities = 2

    def __init__(self, dims, token_dims, dim=128, trunk=(256,), heads: int = 4, dropout: float = 0.0):
        super().__init__(dims, token_dims, dim, trunk)
        heads, dropout = attention_options(heads, dropout, self.dim)
        self.query = nn.ModuleDict({m: nn.Linear(self.dims[m], self.dim) for m in self.modalities})
        self.key = nn.ModuleDict({m: nn.Linear(self.token_dims[m], self.dim) for m in self.modalities})
        # one attention per query modality: "text reads image" and "image reads text" differ
        self.attend = nn.ModuleDict({m: nn.MultiheadAttention(self.dim, heads, dropout=dropout, batch_first=True)
                                     for m in self.modalities})
        self.norm = nn.ModuleDict({m: nn.LayerNorm(self.dim) for m in self.modalities})
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        keys, valids = {}, {}
        for m in self.modalities:
            tokens, valids[m] = clean_tokens(encoded[m], mask[m].bool())
            keys[m] = self.key[m](tokens)
        outputs = []
        for m in self.modalities:
            q = self.query[m](zero_missing(encoded[m].vector, mask[m].bool())).unsqueeze(1)
            others = [n for n in self.modalities if n != m]
            kv = torch.cat([keys[n] for n in others], 1)
            valid = torch.cat([valids[n] for n in others], 1)
            attended, _ = self.attend[m](q, kv.to(q.dtype), kv.to(q.dtype), key_padding_mask=key_padding(valid),
                                         need_weights=False)
            attended = attended.masked_fill(~valid.any(1).view(-1, 1, 1), 0)  # nothing to attend to
            outputs.append(self.norm[m]((q + attended).squeeze(1)))
        return masked_mean(torch.stack(outputs, 1), present_matrix(mask, self.modalities))
