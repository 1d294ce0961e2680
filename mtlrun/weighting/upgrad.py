"""UPGrad: P. Quinton & V. Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (arXiv:2406.16232).

Every task gradient is projected on the dual cone of all of them (the set of directions that conflict
with none) and the projections are averaged: the update never conflicts with a task, and its weights
are a quadratic program on the Gramian. torchjd.aggregation.UPGrad, with torchjd's quadprog projector
(pip install "mtlrun[solvers]").
"""

from __future__ import annotations

from torchjd import aggregation
from torchjd.linalg import QuadprogProjector

from mtlrun.weighting.gradient_base import GradientAggregation


class UPGrad(GradientAggregation):
    """UPGrad (Quinton & Rey 2024): project every task gradient on the dual cone of all of them, average.
    Needs quadprog (through qpsolvers)."""

    packages = ("qpsolvers", "quadprog")

    def __init__(self, norm_eps: float = 0.0001, reg_eps: float = 0.0001, grad_on: str = "parameters"):
        super().__init__(grad_on)
        self.norm_eps, self.reg_eps = float(norm_eps), float(reg_eps)

    def make_aggregator(self, num_tasks):
        return aggregation.UPGrad(projector=QuadprogProjector(norm_eps=self.norm_eps, reg_eps=self.reg_eps))
