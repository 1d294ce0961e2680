"""DualProj: as in P. Quinton & V. Rey, "Jacobian Descent for Multi-Objective Optimization", 2024
(arXiv:2406.16232), after GEM: D. Lopez-Paz & M. Ranzato, "Gradient Episodic Memory for Continual
Learning", NeurIPS 2017.

The mean task gradient is projected on the dual cone of the task gradients (the set of directions that
conflict with none). torchjd.aggregation.DualProj, with torchjd's quadprog projector (pip install
"mtlrun[solvers]"). The hyperparameters are UPGrad's.
"""

from __future__ import annotations

from torchjd import aggregation
from torchjd.linalg import QuadprogProjector

from mtlrun.weighting.upgrad import UPGrad


class DualProj(UPGrad):
    """DualProj (as in Quinton & Rey 2024, after GEM): the mean gradient projected on the dual cone of the
    task gradients. Needs quadprog (through qpsolvers)."""

    def make_aggregator(self, num_tasks):
        return aggregation.DualProj(projector=QuadprogProjector(norm_eps=self.norm_eps, reg_eps=self.reg_eps))
