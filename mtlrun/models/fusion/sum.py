"""Sum: out = sum over present m of (W_m x_m + b_m).

Additive fusion (Baltrusaitis, Ahuja & Morency 2019, "Multimodal Machine Learning: A Survey and Taxonomy").
The magnitude grows with the number of present modalities; `mean` normalises it.
"""

from __future__ import annotations

from mtlrun.models.fusion.base import Projected


class Sum(Projected):
    """The sum of the present modalities' projections."""

    def __init__(self, dims, token_dims, dim=128, trunk=(256,)):
        super().__init__(dims, token_dims, dim, trunk)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        return self.projections(encoded, mask)[0].sum(1)
