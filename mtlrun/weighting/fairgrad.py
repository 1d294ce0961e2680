"""FairGrad: H. Ban & K. Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024.

The weights are the alpha-fair allocation of the tasks' utilities: G w = w^(-1/alpha) with G the
Gramian of the task gradients (alpha = 1: proportional fairness; alpha -> infinity: towards max-min
fairness), solved by scipy's least_squares. torchjd.aggregation.FairGrad. Not scale-invariant: the
Gramian it is given is that of the true (unscaled) gradients.
"""

from __future__ import annotations

from torchjd import aggregation

from mtlrun.errors import UsageError
from mtlrun.weighting.gradient_base import GradientAggregation


class FairGrad(GradientAggregation):
    """FairGrad (Ban & Ji 2024): alpha-fair allocation, G w = w^(-1/alpha). Needs scipy."""

    packages = ("scipy",)

    def __init__(self, alpha: float = 1.0, max_iters: int | None = None, grad_on: str = "parameters"):
        super().__init__(grad_on)
        if not alpha > 0:
            raise UsageError(f"weighting.alpha={alpha}: must be > 0 (the paper uses 0.5 to 5)")
        self.alpha = float(alpha)
        self.max_iters = None if max_iters is None else int(max_iters)

    def make_aggregator(self, num_tasks):
        return aggregation.FairGrad(alpha=self.alpha, max_iters=self.max_iters)
