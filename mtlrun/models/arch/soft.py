"""Soft parameter sharing (Duong et al. 2015): one encoder per task, tied by a parameter distance penalty.

    regularizer = lambda_ * mean over task pairs (i < j) of sum_p ||p_i - p_j||^2

over all encoder parameters p (weights, biases, norm affines; not buffers). The squared distance is summed
over parameters, like weight decay, and averaged over the T(T-1)/2 pairs so `lambda_` means the same for
any number of tasks; with one task or `lambda_=0` there is no penalty (`regularizer()` is None).
Nothing is shared apart from the penalty, so every parameter belongs to one task, `shared_parameters()`
is empty and `forward(..., return_shared=True)` gives None.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtlrun.models.base import MultiTaskModel
from mtlrun.models.arch._common import make_heads


class SoftParameterSharing(MultiTaskModel):
    has_shared_representation = False

    def __init__(self, make_encoder: Callable[[], nn.Module], tasks: dict, modality: str | None,
                 lambda_: float = 1e-3, head_hidden: int = 0, head_dropout: float = 0.0):
        super().__init__()
        self.modality = modality
        self.lambda_ = float(lambda_)
        self.encoders = nn.ModuleDict({name: make_encoder() for name in tasks})
        self.heads = make_heads(tasks, next(iter(self.encoders.values())), head_hidden, head_dropout, arch="soft")

    def task_modules(self, task):
        return [self.heads[task], self.encoders[task]]

    def forward(self, inputs, return_shared=False, modality_mask=None):
        x = self.encoder_input(inputs, modality_mask)
        preds = {name: self.heads[name](encoder(x)) for name, encoder in self.encoders.items()}
        return (preds, None) if return_shared else preds

    def regularizer(self) -> torch.Tensor | None:
        """The penalty; None (nothing added, nothing logged) with `lambda_=0` or a single task."""
        per_task = [list(encoder.parameters()) for encoder in self.encoders.values()]
        num_tasks = len(per_task)
        if num_tasks < 2 or self.lambda_ == 0:
            return None
        # With d_i = p_i - p_0: sum_{i<j} ||p_i - p_j||^2 = T sum_i ||d_i||^2 - ||sum_i d_i||^2, one pass over
        # the T copies instead of T(T-1)/2 pairs; exactly 0 for identical copies, and the first term is at
        # most T times the result, so the subtraction loses little precision.
        total = 0
        for first, *rest in zip(*per_task):
            d = torch.stack(rest) - first
            total = total + num_tasks * d.pow(2).sum() - d.sum(0).pow(2).sum()
        pairs = num_tasks * (num_tasks - 1) / 2
        return self.lambda_ * total / pairs
