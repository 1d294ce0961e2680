"""Static loss weighting: minimise sum_k w_k L_k with w_k = tasks.<k>.weight."""

from __future__ import annotations

from mtlrun.weighting.base import Weighting


class StaticWeighting(Weighting):
    def setup(self, tasks, model):
        super().setup(tasks, model)
        self.weights = {t: tasks[t].weight for t in self.task_names}  # Python floats: no device sync

    def backward(self, losses, backward):
        objective = sum(self.weights[t] * losses[t] for t in self.task_names)
        backward(objective)
        return objective.detach()

    def current_weights(self):
        return dict(self.weights)
