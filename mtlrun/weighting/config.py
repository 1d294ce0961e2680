"""ConFIG: Q. Liu, M. Chu & N. Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks", ICLR 2025 (conflict-free inverse gradients). The module is named after its YAML, weighting=config.

The update's direction has the same cosine with every task gradient (the pseudo-inverse of the matrix of
unit task gradients applied to a vector of ones), and its length is the sum of the task gradients'
projections on it. torchjd.aggregation.ConFIG. Not a weighting of the Gramian: it gets the Jacobian
itself, and the weight it logs is the proxy <aggregate, g_k> / ||g_k||^2.
"""

from __future__ import annotations

from torchjd import aggregation

from mtlrun.weighting.gradient_base import GradientAggregation


class ConFIG(GradientAggregation):
    """ConFIG (Liu et al. 2024): the direction with equal cosine to every task gradient, scaled by the sum
    of the projections on it."""

    needs_jacobian = True

    def make_aggregator(self, num_tasks):
        return aggregation.ConFIG()
