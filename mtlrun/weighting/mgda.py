"""MGDA: J.-A. Désidéri, "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization",
Comptes Rendus Mathematique 2012; solved with the Frank-Wolfe method of O. Sener & V. Koltun, "Multi-Task
Learning as Multi-Objective Optimization", NeurIPS 2018 (at grad_on=representation: their MGDA-UB).

The update is the minimum-norm point of the convex hull of the task gradients, sum_k w_k g_k with w in
the simplex; it is a common descent direction whenever one exists. torchjd.aggregation.MGDA.
"""

from __future__ import annotations

from torchjd import aggregation

from mtlrun.weighting.gradient_base import GradientAggregation


class MGDA(GradientAggregation):
    """MGDA (Désidéri 2012) with the Frank-Wolfe solver of Sener & Koltun 2018: the minimum-norm point of
    the convex hull of the task gradients (at grad_on=representation: MGDA-UB)."""

    def __init__(self, epsilon: float = 0.001, max_iters: int = 100, grad_on: str = "parameters"):
        super().__init__(grad_on)
        self.epsilon, self.max_iters = float(epsilon), int(max_iters)

    def make_aggregator(self, num_tasks):
        return aggregation.MGDA(epsilon=self.epsilon, max_iters=self.max_iters)
