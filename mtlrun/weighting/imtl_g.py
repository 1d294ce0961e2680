"""IMTL-G: L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang, Q. Liao & W. Zhang, "Towards Impartial
Multi-task Learning", ICLR 2021 (the gradient balance half; imtl_l.py is the loss balance half).

The update g = sum_k w_k g_k (sum_k w_k = 1) whose projections on every task gradient's unit direction
are equal: g . u_k = g . u_1 for all k. torchjd.aggregation.IMTLG.
"""

from __future__ import annotations

from torchjd import aggregation

from mtlrun.weighting.gradient_base import GradientAggregation


class IMTLG(GradientAggregation):
    """IMTL-G (Liu et al. 2021): the update with equal projections on every task gradient's direction."""

    def make_aggregator(self, num_tasks):
        return aggregation.IMTLG()
