"""Low-rank Multimodal Fusion (Liu et al. 2018, "Efficient Low-rank Multimodal Fusion with Modality-Specific
Factors"): Tensor fusion's weight as a rank-`rank` decomposition,

    z_m = [h_m; 1],  h_m = W_m x_m + b_m   (size rank_dim; h_m = 0 for a missing modality)
    out = sum_{r=1..rank} prod_m (F_m^r z_m) + b        (F_m^r: dim x (rank_dim + 1))

Linear in the number of modalities instead of exponential. A missing modality's factor F_m^r [0; 1] is a
learned constant that does not depend on its encoding. Options: rank, rank_dim.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mtlrun.models.fusion.base import Projected, int_option, with_one


class LowRank(Projected):
    """The sum over ranks of the product over modalities of F_m^r [projection; 1], plus a bias."""

    def __init__(self, dims, token_dims, dim=128, trunk=(256,), rank: int = 4, rank_dim: int = 8):
        rank, rank_dim = int_option("rank", rank), int_option("rank_dim", rank_dim)
        super().__init__(dims, token_dims, dim, trunk, project_dim=rank_dim)
        self.rank, self.rank_dim = rank, rank_dim
        self.factors = nn.ParameterDict()
        for i, m in enumerate(self.modalities):
            # each factor F_m^r z_m ~ unit scale so the M-fold product neither explodes nor vanishes; the
            # first modality's factors also carry 1 / sqrt(rank) so the sum over ranks stays unit scale
            std = 1 / math.sqrt(rank_dim + 1) / (math.sqrt(rank) if i == 0 else 1)
            self.factors[m] = nn.Parameter(torch.randn(rank, rank_dim + 1, self.dim) * std)
        self.bias = nn.Parameter(torch.zeros(self.dim))
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        product = None
        for m in self.modalities:
            z = with_one(self.projection(m, encoded, mask))
            f = torch.einsum("bi,rio->bro", z, self.factors[m].to(z.dtype))  # [B, rank, dim]
            product = f if product is None else product * f.to(product.dtype)
        return product.sum(1) + self.bias
