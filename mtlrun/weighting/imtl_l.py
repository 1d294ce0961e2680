"""IMTL-L: L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang, Q. Liao & W. Zhang, "Towards Impartial
Multi-task Learning", ICLR 2021 (the loss balance half; imtl_g.py is the gradient balance half).

Every loss is scaled by a learned exp(s_k), and -s_k is added so the scale cannot collapse to 0:
objective = sum_k exp(s_k) L_k - s_k. At the optimum in s_k every scaled loss is 1: the tasks' losses
are balanced whatever their units. The s_k are parameters, stepped by the model's optimizer.
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrun.weighting.loss_base import LossWeighting


class IMTLL(LossWeighting):
    """IMTL-L (Liu et al. 2021, loss balance): sum_k exp(s_k) L_k - s_k, with s_k learned."""

    def setup(self, tasks, model):
        super().setup(tasks, model)
        self.log_scale = nn.Parameter(torch.zeros(self.num_tasks))

    def objective(self, losses, labelled):
        scale = torch.exp(self.log_scale)
        self.weights = scale.detach() * labelled
        return ((scale * losses - self.log_scale) * labelled).sum()
