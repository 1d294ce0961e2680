"""Late fusion (`fusion=late`): one complete multi-task model per modality (encoder + the chosen arch + heads);
per task, their predictions are combined over the modalities a sample has. A missing modality never votes.

Early (feature-level) vs late (decision-level) fusion: Snoek, Worring & Smeulders 2005, "Early versus late
fusion in semantic video analysis". `combine=mean` averages the predictions (logits for classification
tasks, i.e. a product of the modalities' class distributions up to normalisation); `combine=learned`
learns a logit per task and modality, softmax-normalised over the modalities a sample has. Each modality's
model has its own shared parameters; the combination weights of task t are task t's own.

Unlike the feature fusions (base.Fusion) it combines predictions, not encodings, and says so with
`combines_predictions = True`: `build_model` then builds one arch per modality and passes them as
`models=`, with `tasks=`.
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrun.data.modality import full_mask
from mtlrun.errors import UsageError
from mtlrun.models.base import MultiTaskModel


class LateFusion(MultiTaskModel):
    """One multi-task model per modality; per task, predictions are combined over present modalities."""

    combines_predictions = True

    def __init__(self, models: dict[str, MultiTaskModel], tasks: dict, combine: str = "mean"):
        super().__init__()
        if combine not in ("mean", "learned"):
            raise UsageError(f"fusion.combine={combine}: valid: mean, learned")
        self.models = nn.ModuleDict(models)
        self.modalities = list(models)
        self.combine = combine
        self.has_shared_representation = all(m.has_shared_representation for m in models.values())
        self.heads = nn.ModuleDict({t: _TaskCombiner(len(models), combine == "learned") for t in tasks})

    def task_modules(self, task):
        return [self.heads[task]] + [m for model in self.models.values() for m in model.task_modules(task)]

    def regularizer(self):
        terms = [r for r in (model.regularizer() for model in self.models.values()) if r is not None]
        return torch.stack(terms).sum() if terms else None

    def forward(self, inputs, return_shared=False, modality_mask=None):
        mask = full_mask(inputs, modality_mask, self.modalities)
        outputs = [model(inputs, return_shared=return_shared) for model in self.models.values()]
        preds_by_modality = [o[0] if return_shared else o for o in outputs]
        present = torch.stack([mask[m] for m in self.modalities], dim=1)  # [B, M]
        preds = {t: head(present, [p[t] for p in preds_by_modality]) for t, head in self.heads.items()}
        if not return_shared:
            return preds
        if not self.has_shared_representation:
            return preds, None
        shared = []
        for _, s in outputs:
            shared.extend(s if isinstance(s, list) else [s])
        return preds, shared


class _TaskCombiner(nn.Module):
    def __init__(self, num_modalities: int, learned: bool):
        super().__init__()
        if learned:
            self.logits = nn.Parameter(torch.zeros(num_modalities))
        else:  # a buffer, not a frozen parameter: gradient methods only ever see trainable parameters
            self.register_buffer("logits", torch.zeros(num_modalities))

    def forward(self, present: torch.Tensor, preds: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(preds, dim=1)  # [B, M, ...]
        # a large negative logit rather than -inf keeps a sample with no modality finite (all weights 0)
        logits = self.logits.float().expand_as(present).masked_fill(~present, -1e4)
        weights = torch.softmax(logits, dim=1) * present
        shape = (*weights.shape, *[1] * (stacked.dim() - 2))
        # where(), not a product: a missing modality's prediction must not leak in even if it is NaN
        return torch.where(present.view(shape), weights.view(shape).to(stacked.dtype) * stacked, 0).sum(1)
