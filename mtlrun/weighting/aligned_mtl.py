"""Aligned-MTL: D. Senushkin, N. Patakin, A. Kuznetsov & A. Konushin, "Independent Component Alignment for
Multi-Task Learning", CVPR 2023.

The task gradients' matrix is replaced by the closest one whose singular values are all equal (its
principal components aligned, so no task dominates and the system is well conditioned), rescaled by the
smallest singular value (`scale_mode=min`, the paper), the median, or the RMSE (the original code).
torchjd.aggregation.AlignedMTL.
"""

from __future__ import annotations

from torchjd import aggregation

from mtlrun.errors import UsageError
from mtlrun.weighting.gradient_base import GradientAggregation


class AlignedMTL(GradientAggregation):
    """Aligned-MTL (Senushkin et al. 2023): align the principal components of the task gradients."""

    def __init__(self, scale_mode: str = "min", grad_on: str = "parameters"):
        super().__init__(grad_on)
        if scale_mode not in ("min", "median", "rmse"):
            raise UsageError(f"weighting.scale_mode={scale_mode}: valid: min, median, rmse")
        self.scale_mode = scale_mode

    def make_aggregator(self, num_tasks):
        return aggregation.AlignedMTL(scale_mode=self.scale_mode)
