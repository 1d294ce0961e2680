"""Learned modality weights: out = sum over present m of w_m (W_m x_m + b_m),
w = softmax of the learned logits a_m over the present modalities only.

Scalar per-modality attention weights (Baltrusaitis, Ahuja & Morency 2019, "Multimodal Machine Learning: A
Survey and Taxonomy"); renormalising over the present ones keeps the weights a convex combination whatever
is missing. The logits start at 0 (= Mean).
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrun.models.fusion.base import Projected, masked_softmax, present_matrix


class Weighted(Projected):
    """A softmax-weighted sum of the present modalities' projections, one learned logit per modality."""

    def __init__(self, dims, token_dims, dim=128, trunk=(256,)):
        super().__init__(dims, token_dims, dim, trunk)
        self.logits = nn.Parameter(torch.zeros(len(self.modalities)))
        self.out_dim = self.dim

    def weights(self, mask: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, M]: each sample's modality weights (zeros for missing modalities; rows sum to 1 or 0)."""
        present = present_matrix(mask, self.modalities)
        return masked_softmax(self.logits.expand(present.shape), present, 1)

    def forward(self, encoded, mask):
        h, _ = self.projections(encoded, mask)
        return (self.weights(mask).unsqueeze(-1).to(h.dtype) * h).sum(1)
