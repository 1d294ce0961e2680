"""The base of the adaptive loss weightings: one backward of a scalar objective built from the per-task losses.

Each method is a file of its own (uw.py, dwa.py, famo.py, ...) that subclasses `LossWeighting` and writes
its `objective`. The formulas are those of torchjd.scalarization (UW, DWA, Random, GeometricMean, IMTLL,
FAMO), and the tests check that they agree with it when every task is labelled. They are written out
rather than called because of what a training loop needs and those classes do not give:
- partial labels: a task with no label in the batch (loss exactly 0) must drop out. torchjd's UW and
  IMTL-L would still push its learned term (the `+ s` regulariser), GeometricMean gives NaN gradients
  (log 0), FAMO's normaliser divides by the loss and zeroes every other task;
- resume: DWA's loss history and FAMO's logits and Adam moments live in Python attributes there, outside
  `state_dict`, so a checkpoint would drop them; here they are buffers;
- logging: `current_weights()` must say which weight each task got, which a scalarizer does not expose;
- no host sync: GeometricMean checks `(values < 0).any()` in Python on every call.
"""

from __future__ import annotations

import torch

from mtlrun.weighting.base import Weighting


class LossWeighting(Weighting):
    """objective = f(losses) (+ the model's regulariser), backpropagated once.

    Subclasses implement `objective(losses, labelled)` with `losses` the [T] vector and `labelled` the
    [T] boolean mask of tasks that have a label in the batch (loss != 0), and set `self.weights`, the
    [T] weights each task's loss got (d objective / d loss_k) for logging. Learned weights are
    `nn.Parameter`s (stepped by the model's optimizer); other state goes in buffers (checkpointed).
    """

    def __init__(self, grad_on: str | None = None):
        super().__init__()
        self.refuse_grad_on(grad_on)

    def setup(self, tasks, model):
        super().setup(tasks, model)
        self.num_tasks = len(self.task_names)
        self.register_buffer("weights", torch.ones(self.num_tasks), persistent=False)

    def objective(self, losses: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, losses, *, scale, shared=None, extra=None):
        stacked = torch.stack([losses[t].float() for t in self.task_names])
        objective = self.objective(stacked, stacked.detach() != 0)
        if extra is not None:
            objective = objective + extra
        scale(objective).backward()
        return objective.detach()

    def current_weights(self):
        return self.weights
