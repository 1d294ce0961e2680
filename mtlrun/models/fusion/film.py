"""Feature-wise linear modulation (Perez et al. 2018, "FiLM: Visual Reasoning with a General Conditioning
Layer") of one primary modality by the others:

    p = W_p x_primary + b_p                       (0 when the primary is missing)
    c = mean over the present other m of (W_m x_m + b_m)
    out = (1 + a * gamma(c)) * p + a * beta(c),   a = 1 if any other modality is present, else 0

gamma is the deviation from 1 (the paper's residual form), so without context the output is p exactly;
without the primary it is beta(c). Options: primary (null = the first modality).
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrun.errors import UsageError
from mtlrun.models.fusion.base import Fusion, masked_mean, present_matrix, project_present


class FiLM(Fusion):
    """The primary modality's projection, scaled and shifted by the mean of the others' projections."""

    min_modalities = 2

    def __init__(self, dims, token_dims, dim=128, trunk=(256,), primary: str | None = None):
        super().__init__(dims, token_dims, dim, trunk)
        if primary is None:
            primary = self.modalities[0]
        if primary not in self.dims:
            raise UsageError(f"fusion.primary={primary!r} is not one of the model's modalities; valid: "
                             f"{', '.join(self.modalities)} (null = the first)")
        self.primary = primary
        self.context = [m for m in self.modalities if m != primary]
        self.project_primary = nn.Linear(self.dims[primary], self.dim)
        self.project_context = nn.ModuleDict({m: nn.Linear(self.dims[m], self.dim) for m in self.context})
        self.gamma = nn.Linear(self.dim, self.dim)
        self.beta = nn.Linear(self.dim, self.dim)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        p = project_present(self.project_primary, encoded[self.primary].vector, mask[self.primary].bool())
        contexts = [project_present(self.project_context[m], encoded[m].vector, mask[m].bool())
                    for m in self.context]
        has_context = present_matrix(mask, self.context)
        c = masked_mean(torch.stack(contexts, 1), has_context)
        # masked_fill (not a product with has_context) so a sample without context gets p bit for bit
        no_context = ~has_context.any(1, keepdim=True)
        gamma, beta = self.gamma(c).masked_fill(no_context, 0), self.beta(c).masked_fill(no_context, 0)
        return (1 + gamma) * p + beta
