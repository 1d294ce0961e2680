"""Tensor Fusion Network (Zadeh et al. 2017, "Tensor Fusion Network for Multimodal Sentiment Analysis"):

    z_m = [W_m x_m + b_m; 1]   (size rank_dim + 1; [0; 1] for a missing modality)
    out = ReLU(W vec(z_1 (x) z_2 (x) ... (x) z_M) + b)

The outer product holds every unimodal, bimodal, ... M-modal interaction; a missing modality's factor
[0; 1] keeps exactly the terms of the present ones. The product has (rank_dim + 1) ** M features (6561 for
4 modalities at rank_dim 8): keep rank_dim small or use low_rank. Options: rank_dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtlrun.errors import UsageError
from mtlrun.models.fusion.base import Projected, int_option, with_one

# The outer product has (rank_dim + 1) ** M features: refuse sizes whose output layer alone would be a few
# hundred million parameters (low_rank is the answer for those).
MAX_FEATURES = 1 << 20


class Tensor(Projected):
    """ReLU(W vec(outer product of the [projection; 1] vectors of all modalities) + b)."""

    def __init__(self, dims, token_dims, dim=128, trunk=(256,), rank_dim: int = 8):
        rank_dim = int_option("rank_dim", rank_dim)
        super().__init__(dims, token_dims, dim, trunk, project_dim=rank_dim)
        self.rank_dim = rank_dim
        features = (rank_dim + 1) ** len(self.modalities)
        if features > MAX_FEATURES:
            raise UsageError(f"fusion.rank_dim={rank_dim}: the outer product of {len(self.modalities)} "
                             f"modalities would have {features} features (more than {MAX_FEATURES}); "
                             f"lower fusion.rank_dim or use fusion=low_rank")
        self.out = nn.Linear(features, self.dim)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        fused = None
        for m in self.modalities:
            z = with_one(self.projection(m, encoded, mask))
            if fused is None:
                fused = z
            else:
                dtype = torch.promote_types(fused.dtype, z.dtype)
                fused = torch.einsum("bi,bj->bij", fused.to(dtype), z.to(dtype)).flatten(1)
        return F.relu(self.out(fused))
