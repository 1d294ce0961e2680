"""Uncertainty weighting: A. Kendall, Y. Gal & R. Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
Losses for Scene Geometry and Semantics", CVPR 2018.

Each task's loss is weighted by its learned homoscedastic uncertainty: with s_k = log sigma_k^2,
objective = sum_k 0.5 exp(-s_k) L_k + 0.5 s_k (the second term stops sigma_k from growing without bound).
The s_k are parameters, stepped by the model's optimizer.
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrun.weighting.loss_base import LossWeighting


class UncertaintyWeighting(LossWeighting):
    """Kendall et al. 2018: sum_k 0.5 exp(-s_k) L_k + 0.5 s_k, with s_k = log sigma_k^2 learned.

    The log-variance terms are part of the objective (so the logged objective can be negative). A task
    without labels in the batch is left out entirely, or its 0.5 s_k alone would push s_k down.
    """

    def __init__(self, log_var_init: float = 0.0, grad_on: str | None = None):
        super().__init__(grad_on)
        self.log_var_init = float(log_var_init)

    def setup(self, tasks, model):
        super().setup(tasks, model)
        self.log_var = nn.Parameter(torch.full((self.num_tasks,), self.log_var_init))

    def objective(self, losses, labelled):
        precision = 0.5 * torch.exp(-self.log_var)
        terms = precision * losses + 0.5 * self.log_var
        self.weights = precision.detach() * labelled
        return (terms * labelled).sum()
