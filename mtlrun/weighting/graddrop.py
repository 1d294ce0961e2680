"""GradDrop: Z. Chen, J. Ngiam, Y. Huang, T. Luong, H. Kretzschmar, Y. Chai & D. Anguelov, "Just Pick a
Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020.

Coordinate by coordinate, the positive sign's purity P = (1 + sum_k g_k / sum_k |g_k|) / 2 is the
probability of keeping the task gradients of that sign (the others are dropped); `leak` keeps a share
of every task's gradient whatever its sign. The paper applies it to the shared representation
(grad_on=representation). torchjd.aggregation.GradDrop. Not a weighting of the Gramian: it gets the
Jacobian itself, and the weight it logs is the proxy <aggregate, g_k> / ||g_k||^2.
"""

from __future__ import annotations

import torch
from torchjd import aggregation

from mtlrun.errors import UsageError
from mtlrun.weighting.gradient_base import GradientAggregation


class GradDrop(GradientAggregation):
    """GradDrop (Chen et al. 2020): keep, coordinate by coordinate, the gradients of one sign, drawn with
    the probability of the positive sign's purity. Originally applied to the shared representation."""

    needs_jacobian = True

    def __init__(self, leak: list[float] | None = None, grad_on: str = "parameters"):
        super().__init__(grad_on)
        self.leak = None if leak is None else [float(v) for v in leak]

    def make_aggregator(self, num_tasks):
        if self.leak is not None and len(self.leak) != num_tasks:
            raise UsageError(f"weighting.leak: {len(self.leak)} values for {num_tasks} tasks "
                             f"({', '.join(self.task_names)})")
        return aggregation.GradDrop(leak=None if self.leak is None else torch.tensor(self.leak))

    def combine_matrix(self, blocks, s):
        leak = self.aggregator.leak
        if leak is not None and leak.device != blocks[0].device:
            self.aggregator.leak = leak.to(blocks[0].device)  # once: the leak follows the Jacobian
        return super().combine_matrix(blocks, s)
