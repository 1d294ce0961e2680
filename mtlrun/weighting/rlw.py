"""Random loss weighting: B. Lin, F. Ye, Y. Zhang & I. W. Tsang, "Reasonable Effectiveness of Random
Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022.

objective = sum_k lambda_k L_k with lambda = softmax(z), z ~ N(0, I) drawn afresh every step: a baseline
that weights the tasks equally in expectation, and that the paper finds competitive with the
elaborate methods.
"""

from __future__ import annotations

import torch

from mtlrun.weighting.loss_base import LossWeighting


class RandomLossWeighting(LossWeighting):
    """RLW (Lin et al. 2022): sum_k lambda_k L_k with lambda = softmax(z), z ~ N(0, I) drawn every step.

    One draw per optimizer step (shared by the micro-batches of an accumulation window).
    The draws come from a generator of their own, seeded from the run's seed at set-up: every DDP rank
    draws the same weights, and the generator's state is in the checkpoint, so a resumed run draws what
    the uninterrupted one would have.
    """

    def setup(self, tasks, model):
        super().setup(tasks, model)
        self.generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)

    def objective(self, losses, labelled):
        # once per optimizer step: the micro-batches of an accumulation window share the window's draw, so
        # `trainer.accumulate=k` is the step of the k times larger batch (windows end at checkpoints, so a
        # resumed run starts with a fresh draw, as the uninterrupted one does)
        if self.first_micro_batch or getattr(self, "_drawn", None) is None:
            # drawn on the CPU (T numbers) and copied over: no device generator state to carry around
            draw = torch.randn(self.num_tasks, generator=self.generator)
            self._drawn = torch.softmax(draw, dim=0).to(losses.device, non_blocking=True)
        weights = self._drawn
        self.weights = weights * labelled
        return (weights * losses).sum()

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state):
        self.generator.set_state(state["generator"])
