"""Concatenation: out = ReLU(W [x_1; ...; x_M] + b), x_m = 0 for a missing modality.

The baseline feature-level fusion (Baltrusaitis, Ahuja & Morency 2019, "Multimodal Machine Learning: A Survey
and Taxonomy"). Zero-filling keeps the layout fixed; the bias is shared, so a sample with every modality
missing gets ReLU(b).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtlrun.models.fusion.base import Fusion, zero_missing


class Concat(Fusion):
    """ReLU(W [x_1; ...; x_M] + b) over the zero-filled modality vectors."""

    def __init__(self, dims, token_dims, dim=128, trunk=(256,)):
        super().__init__(dims, token_dims, dim, trunk)
        self.project = nn.Linear(sum(self.dims.values()), self.dim)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        x = torch.cat([zero_missing(encoded[m].vector, mask[m].bool()) for m in self.modalities], 1)
        return F.relu(self.project(x))
