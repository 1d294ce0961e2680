"""PCGrad: T. Yu, S. Kumar, A. Gupta, S. Levine, K. Hausman & C. Finn, "Gradient Surgery for Multi-Task
Learning", NeurIPS 2020.

In random order, each task gradient g_i that conflicts with another g_j (g_i . g_j < 0) loses its
component along it, g_i <- g_i - (g_i . g_j) / ||g_j||^2 g_j; the update is the sum of the projected
gradients. torchjd.aggregation.PCGrad (a weighting of the Gramian: the weights applied are logged).
"""

from __future__ import annotations

from torchjd import aggregation

from mtlrun.weighting.gradient_base import GradientAggregation


class PCGrad(GradientAggregation):
    """PCGrad (Yu et al. 2020): project each gradient on the normal plane of the ones it conflicts with."""

    def make_aggregator(self, num_tasks):
        return aggregation.PCGrad()
