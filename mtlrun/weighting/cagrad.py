"""CAGrad: B. Liu, X. Liu, X. Jin, P. Stone & Q. Liu, "Conflict-Averse Gradient Descent for Multi-task
Learning", NeurIPS 2021.

The update d maximises the worst task improvement min_k g_k . d within a ball of radius c ||g_0||
around the mean gradient g_0 (c = 0: the mean gradient; large c: towards MGDA).
torchjd.aggregation.CAGrad; its solver is cvxpy with Clarabel (pip install "mtlrun[solvers]").
"""

from __future__ import annotations

from torchjd import aggregation

from mtlrun.weighting.gradient_base import GradientAggregation


class CAGrad(GradientAggregation):
    """CAGrad (Liu et al. 2021): the best worst-case improvement within a ball of radius c ||g_0|| around
    the mean gradient g_0. Needs cvxpy (with the Clarabel solver)."""

    packages = ("cvxpy", "clarabel")

    def __init__(self, c: float = 0.4, norm_eps: float = 0.0001, grad_on: str = "parameters"):
        super().__init__(grad_on)
        self.c, self.norm_eps = float(c), float(norm_eps)

    def make_aggregator(self, num_tasks):
        return aggregation.CAGrad(c=self.c, norm_eps=self.norm_eps)
