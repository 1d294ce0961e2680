"""Geometric loss strategy: S. Chennupati, G. Sistu, S. Yogamani & S. A. Rawashdeh, "MultiNet++:
Multi-Stream Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019.

The objective is the geometric mean of the task losses, (prod_k L_k)^(1/T): a relative decrease of any
one loss counts the same whatever that loss's scale, so no task dominates by its units.
"""

from __future__ import annotations

import torch

from mtlrun.weighting.loss_base import LossWeighting


class GeometricLossStrategy(LossWeighting):
    """GLS (Chennupati et al. 2019): (prod_k L_k)^(1/T), the geometric mean of the losses.

    Computed as exp(mean_k log L_k) over the labelled tasks; the losses must be positive.
    d objective / d L_k = objective / (T L_k): a task's weight is inversely proportional to its loss.
    """

    @classmethod
    def accumulation_problem(cls, grad_on=None):
        return ("weights each loss by the inverse of the micro-batch's own loss (the geometric mean is not linear "
                "in the losses)")

    def objective(self, losses, labelled):
        labelled = labelled & (losses.detach() > 0)
        count = labelled.sum()
        safe = torch.where(labelled, losses, torch.ones_like(losses))  # log 1 = 0, and no gradient
        mean_log = torch.log(safe).sum() / count.clamp_min(1)
        objective = torch.exp(mean_log) * (count > 0)
        self.weights = torch.where(labelled, objective.detach() / (count.clamp_min(1) * safe.detach()),
                                   torch.zeros_like(losses))
        return objective
