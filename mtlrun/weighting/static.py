"""Static loss weighting: minimise sum_k w_k L_k with w_k = tasks.<k>.weight."""

from __future__ import annotations

import torch

from mtlrun.weighting.base import Weighting


class StaticWeighting(Weighting):
    def __init__(self, grad_on: str | None = None):
        super().__init__()
        self.refuse_grad_on(grad_on)

    def setup(self, tasks, model):
        super().setup(tasks, model)
        self.weights = {t: tasks[t].weight for t in self.task_names}  # Python floats: no device sync
        self.register_buffer("weight_vector", torch.tensor([self.weights[t] for t in self.task_names]),
                             persistent=False)

    def backward(self, losses, *, scale, shared=None, extra=None):
        objective = sum(self.weights[t] * losses[t] for t in self.task_names)
        if extra is not None:
            objective = objective + extra
        scale(objective).backward()
        return objective.detach()

    def current_weights(self):
        return self.weight_vector
