"""Dynamic weight average: S. Liu, E. Johns & A. J. Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019 (the paper of MTAN).

A task whose loss fell less over the last epoch gets more weight: lambda_k = T softmax_k(r_k / temperature)
with r_k = L_k(e-1) / L_k(e-2) the ratio of its mean training losses over the two previous epochs.
Needs only the losses (no gradients), once per epoch.
"""

from __future__ import annotations

import torch

from mtlrun import distributed
from mtlrun.errors import UsageError
from mtlrun.weighting.loss_base import LossWeighting


class DynamicWeightAverage(LossWeighting):
    """DWA (Liu et al. 2019): lambda_k = T softmax_k(r_k / temperature), r_k = L_k(e-1) / L_k(e-2).

    L_k(e) is the mean training loss of task k over epoch e (given by the trainer at each epoch end);
    the weights are uniform for the first two epochs, and stay fixed within an epoch. A task whose
    epoch mean is 0 (never labelled) or not finite gets the rate 1.
    """

    def __init__(self, temperature: float = 2.0, grad_on: str | None = None):
        super().__init__(grad_on)
        if not temperature > 0:
            raise UsageError(f"weighting.temperature={temperature}: must be > 0 (the paper uses 2)")
        self.temperature = float(temperature)

    def setup(self, tasks, model):
        super().setup(tasks, model)
        # the buffers are the state: epoch means of the two last epochs, and the weights they give
        self.register_buffer("loss_history", torch.zeros(2, self.num_tasks))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch_weights", torch.ones(self.num_tasks))

    def objective(self, losses, labelled):
        self.weights = self.epoch_weights * labelled
        return (self.epoch_weights * losses).sum()

    def on_epoch_end(self, train_losses):
        means = torch.tensor([float(train_losses[t]) for t in self.task_names],
                             device=self.loss_history.device)
        distributed.reduce_over_ranks_([means], "mean")  # the same history, so the same weights, on every DDP rank
        self.loss_history.copy_(torch.stack([self.loss_history[1], means]))
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:  # once per epoch, outside the step
            older, newer = self.loss_history
            valid = (older > 0) & torch.isfinite(older) & torch.isfinite(newer)
            rates = torch.where(valid, newer / torch.where(valid, older, torch.ones_like(older)),
                                torch.ones_like(older))
            self.epoch_weights.copy_(self.num_tasks * torch.softmax(rates / self.temperature, dim=0))
