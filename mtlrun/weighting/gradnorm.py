"""GradNorm: Z. Chen, V. Badrinarayanan, C.-Y. Lee & A. Rabinovich, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018.

Learned loss weights that balance the tasks' gradient norms.

Each step, with w the weights (renormalised to sum to T before use), G_k = w_k ||grad_W L_k||,
r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0)) and target_k = mean_j G_j * r_k^alpha (a constant), the
weights get the gradient of L_grad = sum_k |G_k - target_k|, that is sign(G_k - target_k) ||grad_W L_k||
(no second-order backward needed), and the model gets the gradient of sum_k w_k L_k. The weights are
parameters, stepped by the model's optimizer.

W (`grad_on`):
- parameters (the paper): the last shared layer, found on the first step by walking back from the
  losses to the first shared Linear/Conv weight (e.g. the small CNN's projection; for a ResNet the last
  convolution of layer4); W is that module's weight and bias. An architecture that shares no parameter
  (soft sharing) has no common W: each task then uses the last layer of its own trunk below its head;
- representation: the shared representation the model returns (cheaper: no walk into the encoder).
The norms cost one small backward per task (through the heads and W's layer), then one backward of the
weighted loss. Under DDP the norms and the losses are those of the global batch (`_global_norms`,
`global_losses`), so every rank keeps the same weights and initial losses.
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrun import distributed
from mtlrun.errors import UsageError
from mtlrun.weighting import graph
from mtlrun.weighting.base import GRAD_ON, Weighting, architecture_name, as_tensor_list, global_losses


def _with_labels(stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return stacked, stacked != 0  # a task without labels in the batch has loss 0


class GradNorm(Weighting):
    grad_on_levels = GRAD_ON

    def __init__(self, alpha: float = 1.5, grad_on: str = "parameters"):
        super().__init__()
        self.grad_on = self.check_grad_on(grad_on)
        if not alpha >= 0:
            raise UsageError(f"weighting.alpha={alpha}: must be >= 0 (1.5 by default, as in the paper on NYUv2)")
        self.alpha = float(alpha)
        self.needs_shared = self.grad_on == "representation"

    def setup(self, tasks, model):
        super().setup(tasks, model)
        T = len(self.task_names)
        arch = architecture_name(model)
        if self.grad_on == "representation" and not getattr(model, "has_shared_representation", True):
            raise UsageError(f"weighting.grad_on=representation: the architecture {arch} has no shared "
                             f"representation (its tasks share no tensor); use weighting.grad_on=parameters")
        self.model = [model]  # a list: not a submodule (no second copy in the state dict)
        self.shared_params = [p for p in model.shared_parameters() if p.requires_grad]
        self.layers: list[list[torch.Tensor]] | None = None  # W for each task, found on the first step
        self.task_weights = nn.Parameter(torch.ones(T))
        self.register_buffer("initial_losses", torch.zeros(T))  # L_k(0): first loss with labels
        self.register_buffer("weights", torch.ones(T), persistent=False)
        self.register_buffer("one", torch.ones(()), persistent=False)

    @classmethod
    def accumulation_problem(cls, grad_on=None):
        return ("takes the gradient norms of each micro-batch, and the norm of the window's summed gradient is "
                "not the sum of the micro-batches' norms")

    def _layers(self, losses: list[torch.Tensor], shared) -> list[list[torch.Tensor]]:
        """W for each task (the same W for all tasks unless the architecture shares no parameter)."""
        if self.grad_on == "representation":
            inputs = as_tensor_list(shared)
            if not inputs:
                raise UsageError(f"weighting={self.method_name()} grad_on=representation: the model returned no "
                                 f"shared representation (shared=None); use weighting.grad_on=parameters")
            return [inputs] * len(losses)
        if self.layers is None:
            model = self.model[0]
            if self.shared_params:
                layer = graph.nearest_layer(losses, model, self.shared_params)
                self.layers = [layer] * len(losses) if layer else []
            else:
                heads = {name: {id(p) for p in model.heads[name].parameters()} for name in self.task_names}
                self.layers = [graph.nearest_layer([loss], model, [p for p in model.parameters()
                                                                    if id(p) not in heads[name]])
                               for loss, name in zip(losses, self.task_names)]
            if not self.layers or not all(self.layers):
                raise UsageError(f"weighting={self.method_name()}: no Linear/Conv weight of {architecture_name(model)} "
                                 f"below the task heads is reached from the task losses; use "
                                 f"weighting.grad_on=representation")
        return self.layers

    def backward(self, losses, *, scale, shared=None, extra=None):
        T = len(self.task_names)
        with torch.no_grad():  # the paper renormalises after every update: sum_k w_k = T
            self.task_weights.clamp_(min=1e-6)
            self.task_weights.mul_(T / self.task_weights.sum())
        weights = self.task_weights.detach()
        scaled = [scale(losses[t]) for t in self.task_names]
        s = scale(self.one)  # what `scale` multiplies by (1/accumulate x the fp16 loss scale)
        layers = self._layers(scaled, shared)

        norms = []
        for loss, inputs in zip(scaled, layers):  # ||grad_W L_k||, through the heads and W only
            grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
            norms.append(torch.cat([(torch.zeros_like(x) if g is None else g).float().flatten()
                                    for g, x in zip(grads, inputs)]))
        norms = self._global_norms(norms) / s

        # under DDP the ranks' mean: every rank keeps the same initial losses (checkpoints hold rank 0's)
        stacked, labelled = global_losses(*_with_labels(torch.stack([losses[t].detach().float()
                                                                     for t in self.task_names])))
        count = labelled.sum().clamp_min(1)
        self.initial_losses.copy_(torch.where((self.initial_losses == 0) & labelled, stacked,
                                              self.initial_losses))
        ratio = torch.where(labelled & (self.initial_losses > 0),
                            stacked / self.initial_losses.clamp_min(1e-30), torch.ones_like(stacked))
        relative = ratio / ((ratio * labelled).sum() / count)
        G = weights * norms
        target = (G * labelled).sum() / count * relative.pow(self.alpha)
        grad_w = torch.where(labelled, torch.sign(G - target) * norms, torch.zeros_like(G))
        grad_w = grad_w * s  # scaled like every gradient: the GradScaler unscales the optimizer's params
        if self.task_weights.grad is None:
            self.task_weights.grad = grad_w
        else:
            self.task_weights.grad += grad_w

        objective = (weights * torch.stack([losses[t] for t in self.task_names])).sum()
        if extra is not None:
            objective = objective + extra
        scale(objective).backward()
        self.weights = weights * labelled
        return objective.detach()

    def _global_norms(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """||grad_W L_k|| of the global batch under DDP (so every rank steps the weights alike, as one process
        on the whole batch would): W's gradients averaged over ranks; at representation level, whose rows are
        the ranks' own samples, the squared norms summed (each rank's loss is a mean over 1/W of the batch)."""
        if self.grad_on != "representation":
            distributed.reduce_over_ranks_(grads, "mean")
        squares = torch.stack([g.pow(2).sum() for g in grads])
        if self.grad_on == "representation" and distributed.world_size() > 1:
            squares = distributed.reduce_over_ranks_([squares])[0] / distributed.world_size() ** 2
        return squares.sqrt()

    def current_weights(self):
        return self.weights
