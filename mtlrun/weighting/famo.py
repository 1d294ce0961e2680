"""FAMO: B. Liu, Y. Feng, P. Stone & Q. Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.

Dynamic weights that make the tasks' losses fall at the same rate, for the cost of one backward:
the objective c sum_k z_k log(L_k - b + eps) with z = softmax(w) has gradient sum_k (c z_k / (L_k - b + eps))
grad L_k, and the logits w are stepped (Adam) towards the tasks whose log-loss fell least.
"""

from __future__ import annotations

import torch

from mtlrun.errors import UsageError
from mtlrun.weighting.base import global_losses
from mtlrun.weighting.loss_base import LossWeighting

_TINY = 1e-12


class FAMO(LossWeighting):
    """FAMO (Liu et al. 2023): c sum_k z_k log(L_k - b + eps), z = softmax(w), c = 1 / sum_k z_k / (L_k - b + eps).

    The logits w follow Adam on the loss decrease: delta_k = log(L_k before) - log(L_k after) of the
    model's update, grad_w = d z / d w . delta. The paper's code recomputes the losses on the same batch
    after the optimizer step (a second forward pass); here "after" is the next step's losses, so FAMO
    costs nothing over static weighting. It refuses `trainer.accumulate>1` (its weights come from each
    micro-batch's own losses, so micro-batches would not make the step of the larger batch). Tasks without labels drop out of z and of the logit update for that step. The
    logits and their Adam moments are buffers: they are in checkpoints and the model's optimizer never
    sees them. Under DDP the losses are averaged over ranks first (`global_losses`), so every rank keeps the
    same logits and previous losses, and a 2-rank run takes the steps of one process on the whole batch.
    """

    def __init__(self, lr: float = 0.025, weight_decay: float = 1e-3, min_loss: float = 0.0,
                 eps: float = 1e-8, grad_on: str | None = None):
        super().__init__(grad_on)
        problems = [f"weighting.{k}={v}: must be >= 0" for k, v in (("lr", lr), ("weight_decay", weight_decay))
                    if not v >= 0]
        if problems:
            raise UsageError("; ".join(problems))
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.min_loss, self.eps = float(min_loss), float(eps)
        self.betas = (0.9, 0.999)  # torch.optim.Adam's defaults, as in the paper's code

    def setup(self, tasks, model):
        super().setup(tasks, model)
        T = self.num_tasks
        self.register_buffer("logits", torch.zeros(T))
        self.register_buffer("adam_m", torch.zeros(T))
        self.register_buffer("adam_v", torch.zeros(T))
        self.register_buffer("adam_step", torch.zeros(()))
        self.register_buffer("previous_losses", torch.zeros(T))
        self.register_buffer("previous_labelled", torch.zeros(T, dtype=torch.bool))

    @classmethod
    def accumulation_problem(cls, grad_on=None):
        return ("weights each loss by the inverse of the micro-batch's own loss and steps its logits on every "
                "micro-batch")

    def _masked_softmax(self, labelled: torch.Tensor) -> torch.Tensor:
        logits = torch.where(labelled, self.logits, torch.full_like(self.logits, -torch.inf))
        shifted = torch.where(labelled, logits - logits.max().clamp_min(-1e30), logits)
        exp = torch.exp(shifted)  # 0 for unlabelled tasks
        return exp / exp.sum().clamp_min(_TINY)

    def _update_logits(self, losses: torch.Tensor, labelled: torch.Tensor) -> None:
        """One Adam step on the logits from the loss decrease since the previous step (no host sync)."""
        both = self.previous_labelled & labelled
        before = torch.log((self.previous_losses - self.min_loss).clamp_min(0) + self.eps)
        after = torch.log((losses - self.min_loss).clamp_min(0) + self.eps)
        delta = torch.where(both, before - after, torch.zeros_like(after))
        z = self._masked_softmax(both)
        grad = z * (delta - (z * delta).sum())  # (d softmax / d logits)^T delta
        grad = grad + self.weight_decay * self.logits  # Adam's L2 weight decay
        b1, b2 = self.betas
        step = self.adam_step + 1
        m = b1 * self.adam_m + (1 - b1) * grad
        v = b2 * self.adam_v + (1 - b2) * grad * grad
        m_hat, v_hat = m / (1 - b1 ** step), v / (1 - b2 ** step)
        logits = self.logits - self.lr * m_hat / (v_hat.sqrt() + 1e-8)
        # tasks without a before/after pair (first step, no labels) keep their logit and moments
        self.logits.copy_(torch.where(both, logits, self.logits))
        self.adam_m.copy_(torch.where(both, m, self.adam_m))
        self.adam_v.copy_(torch.where(both, v, self.adam_v))
        self.adam_step.copy_(torch.where(both.any(), step, self.adam_step))

    def objective(self, losses, labelled):
        detached, labelled = global_losses(losses.detach(), labelled)
        self._update_logits(detached, labelled)
        self.previous_losses.copy_(detached)
        self.previous_labelled.copy_(labelled)
        z = self._masked_softmax(labelled)
        shifted = (detached - self.min_loss).clamp_min(0) + self.eps
        inverse = z / shifted
        c = 1.0 / inverse.sum().clamp_min(_TINY)
        self.weights = c * inverse  # d objective / d L_k: sums to 1 over the labelled tasks
        # the value c sum_k z_k log(shifted_k); the gradient sum_k weights_k grad L_k (under DDP: the global
        # batch's weights on this rank's losses, which DDP's gradient average turns into the global gradient)
        return (c * z * torch.log(shifted)).sum() + (self.weights * (losses - losses.detach())).sum()

