"""Adaptive loss weighting: one backward of a scalar objective built from the per-task losses.

The formulas are those of torchjd.scalarization (UW, DWA, Random, GeometricMean, IMTLL, FAMO), and the
tests check that they agree with it when every task is labelled. They are written out here rather than
called because of what a training loop needs and those classes do not give:
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
from torch import nn

from mtlrun import distributed
from mtlrun.errors import UsageError
from mtlrun.weighting.base import Weighting, refuse_grad_on

_TINY = 1e-12


class LossWeighting(Weighting):
    """objective = f(losses) (+ the model's regulariser), backpropagated once.

    Subclasses implement `objective(losses, labelled)` with `losses` the [T] vector and `labelled` the
    [T] boolean mask of tasks that have a label in the batch (loss != 0), and set `self.weights`, the
    [T] weights each task's loss got (d objective / d loss_k) for logging.
    """

    method = ""

    def __init__(self, grad_on: str | None = None):
        super().__init__()
        refuse_grad_on(self.method, grad_on)

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


class UncertaintyWeighting(LossWeighting):
    """Kendall et al. 2018: sum_k 0.5 exp(-s_k) L_k + 0.5 s_k, with s_k = log sigma_k^2 learned.

    The log-variance terms are part of the objective (so the logged objective can be negative). A task
    without labels in the batch is left out entirely, or its 0.5 s_k alone would push s_k down.
    """

    method = "uw"

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


class IMTLL(LossWeighting):
    """IMTL-L (Liu et al. 2021, loss balance): sum_k exp(s_k) L_k - s_k, with s_k learned."""

    method = "imtl_l"

    def setup(self, tasks, model):
        super().setup(tasks, model)
        self.log_scale = nn.Parameter(torch.zeros(self.num_tasks))

    def objective(self, losses, labelled):
        scale = torch.exp(self.log_scale)
        self.weights = scale.detach() * labelled
        return ((scale * losses - self.log_scale) * labelled).sum()


class RandomLossWeighting(LossWeighting):
    """RLW (Lin et al. 2022): sum_k lambda_k L_k with lambda = softmax(z), z ~ N(0, I) drawn every step.

    The draws come from a generator of their own, seeded from the run's seed at set-up: every DDP rank
    draws the same weights, and the generator's state is in the checkpoint, so a resumed run draws what
    the uninterrupted one would have.
    """

    method = "rlw"

    def setup(self, tasks, model):
        super().setup(tasks, model)
        self.generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)

    def objective(self, losses, labelled):
        # drawn on the CPU (T numbers) and copied over: no device generator state to carry around
        draw = torch.randn(self.num_tasks, generator=self.generator)
        weights = torch.softmax(draw, dim=0).to(losses.device, non_blocking=True)
        self.weights = weights * labelled
        return (weights * losses).sum()

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state):
        self.generator.set_state(state["generator"])


class GeometricLossStrategy(LossWeighting):
    """GLS (Chennupati et al. 2019): (prod_k L_k)^(1/T), the geometric mean of the losses.

    Computed as exp(mean_k log L_k) over the labelled tasks; the losses must be positive.
    d objective / d L_k = objective / (T L_k): a task's weight is inversely proportional to its loss.
    """

    method = "gls"

    def objective(self, losses, labelled):
        labelled = labelled & (losses.detach() > 0)
        count = labelled.sum()
        safe = torch.where(labelled, losses, torch.ones_like(losses))  # log 1 = 0, and no gradient
        mean_log = torch.log(safe).sum() / count.clamp_min(1)
        objective = torch.exp(mean_log) * (count > 0)
        self.weights = torch.where(labelled, objective.detach() / (count.clamp_min(1) * safe.detach()),
                                   torch.zeros_like(losses))
        return objective


class DynamicWeightAverage(LossWeighting):
    """DWA (Liu et al. 2019): lambda_k = T softmax_k(r_k / temperature), r_k = L_k(e-1) / L_k(e-2).

    L_k(e) is the mean training loss of task k over epoch e (given by the trainer at each epoch end);
    the weights are uniform for the first two epochs, and stay fixed within an epoch. A task whose
    epoch mean is 0 (never labelled) or not finite gets the rate 1.
    """

    method = "dwa"

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
        if distributed.world_size() > 1:  # the same history, so the same weights, on every DDP rank
            distributed.all_reduce_([means])
            means /= distributed.world_size()
        self.loss_history.copy_(torch.stack([self.loss_history[1], means]))
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:  # once per epoch, outside the step
            older, newer = self.loss_history
            valid = (older > 0) & torch.isfinite(older) & torch.isfinite(newer)
            rates = torch.where(valid, newer / torch.where(valid, older, torch.ones_like(older)),
                                torch.ones_like(older))
            self.epoch_weights.copy_(self.num_tasks * torch.softmax(rates / self.temperature, dim=0))


class FAMO(LossWeighting):
    """FAMO (Liu et al. 2023): c sum_k z_k log(L_k - b + eps), z = softmax(w), c = 1 / sum_k z_k / (L_k - b + eps).

    The logits w follow Adam on the loss decrease: delta_k = log(L_k before) - log(L_k after) of the
    model's update, grad_w = d z / d w . delta. The paper's code recomputes the losses on the same batch
    after the optimizer step (a second forward pass); here "after" is the next step's losses, so FAMO
    costs nothing over static weighting (with gradient accumulation, micro-batches of one window count as
    consecutive steps). Tasks without labels drop out of z and of the logit update for that step. The
    logits and their Adam moments are buffers: they are in checkpoints and the model's optimizer never
    sees them. Under DDP the loss decrease is averaged over ranks, so every rank keeps the same logits.
    """

    method = "famo"

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
        if distributed.world_size() > 1:  # the mean decrease over the ranks that have the pair
            stacked = torch.stack([delta, both.float()])
            distributed.all_reduce_([stacked])
            delta, both = stacked[0] / stacked[1].clamp_min(1), stacked[1] > 0
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
        detached = losses.detach()
        self._update_logits(detached, labelled)
        self.previous_losses.copy_(detached)
        self.previous_labelled.copy_(labelled)
        z = self._masked_softmax(labelled)
        shifted = (losses - self.min_loss).clamp_min(0) + self.eps
        inverse = z / shifted.detach()
        c = 1.0 / inverse.sum().clamp_min(_TINY)
        self.weights = c * inverse  # d objective / d L_k: sums to 1 over the labelled tasks
        return (c * z * torch.log(shifted)).sum()
