"""GradVac: Z. Wang, Y. Tsvetkov, O. Firat & Y. Cao, "Gradient Vaccine: Investigating and Improving
Multi-task Optimization in Massively Multilingual Models", ICLR 2021.

Like PCGrad, but every pair of task gradients is moved towards a target cosine similarity phi_ij (an
EMA, rate beta, of the pair's observed cosine) rather than towards orthogonality, and only when below it.
torchjd.aggregation.GradVac.

Stateful: the T x T targets are in the checkpoint (`get_extra_state`). A task without labels in the
batch leaves its targets as they were that step.
"""

from __future__ import annotations

import torch
from torchjd import aggregation

from mtlrun.weighting.gradient_base import GradientAggregation


class GradVac(GradientAggregation):
    """GradVac (Wang et al. 2021): like PCGrad, towards an EMA target of each pair's cosine similarity.

    Stateful: the EMA targets are in the checkpoint. A task without labels keeps its targets that step.
    """

    def __init__(self, beta: float = 0.5, eps: float = 1e-8, grad_on: str = "parameters"):
        super().__init__(grad_on)
        self.beta, self.eps = float(beta), float(eps)

    def make_aggregator(self, num_tasks):
        aggregator = aggregation.GradVac(beta=self.beta, eps=self.eps)
        aggregator.gramian_weighting._ensure_state(num_tasks, torch.float64)  # the host dtype of `solve`
        return aggregator

    @property
    def _phi(self) -> torch.Tensor:
        return self.aggregator.gramian_weighting._phi_t

    def solve(self, gramian, labelled):
        before = self._phi.clone()
        weights = self.aggregator.gramian_weighting(gramian)  # all T rows: the state is T x T
        if not bool(labelled.all()):
            pair = labelled[:, None] & labelled[None, :]
            self._phi.copy_(torch.where(pair, self._phi, before))
            weights = weights * labelled
        return weights

    def get_extra_state(self):
        return {"phi": self._phi.clone()}

    def set_extra_state(self, state):
        self._phi.copy_(state["phi"])
