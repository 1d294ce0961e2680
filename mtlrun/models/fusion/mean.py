"""Mean: out = (1 / |P|) sum over present m in P of (W_m x_m + b_m); zeros when P is empty.

Averaging over the available modalities as in HeMIS (Havaei et al. 2016, "HeMIS: Hetero-Modal Image
Segmentation"): the output scale does not depend on how many modalities a sample has.
"""

from __future__ import annotations

from mtlrun.models.fusion.base import Projected, masked_mean


class Mean(Projected):
    """The mean of the present modalities' projections."""

    def __init__(self, dims, token_dims, dim=128, trunk=(256,)):
        super().__init__(dims, token_dims, dim, trunk)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        return masked_mean(*self.projections(encoded, mask))
