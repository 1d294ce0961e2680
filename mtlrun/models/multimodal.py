"""Several modalities in one model: per-modality encoders + a fusion, or late fusion of predictions.

`FusedEncoder` is what a sharing architecture gets from `make_encoder()` when the data has several
modalities: it reads a `MultiModalInput` (the inputs and the modality mask), encodes each modality with
its own encoder (`backbone.<kind>`), fuses them (`fusion=`), and runs the fused vector through a small MLP
trunk (`fusion.trunk`). It offers the stage API of mtlrun.models.encoders.base.StagedEncoder, so every
`arch` applies unchanged: stage 0 is encode + fuse, stage i > 0 is trunk layer i. Stage outputs are
carried as [B, C, 1, 1] feature maps, the layout the stage-wise architectures work on (a 1 x 1
convolution on them is a linear layer on the fused vector).

`LateFusion` (`fusion=late`) instead builds one complete multi-task model per modality (each with the
chosen `arch`) and combines their predictions per task: a mean over the modalities a sample has, or
learned per-task modality weights renormalised over the present ones. A missing modality never votes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mtlrun.data.modality import full_mask
from mtlrun.models.base import MultiTaskModel
from mtlrun.models.encoders.base import StagedEncoder


class MultiModalInput(NamedTuple):
    inputs: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor] | None  # {modality: BoolTensor[B]}; a modality not in it is present


class EncodeAndFuse(nn.Module):
    def __init__(self, encoders: dict[str, nn.Module], fusion: nn.Module):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion

    def forward(self, x: MultiModalInput) -> torch.Tensor:
        inputs = x.inputs
        # encode(), not forward(): its vector is the one a fusion combines for every encoder (a dense
        # backbone's forward is a map), and its tokens (views or already computed) are there for those
        # fusions that read them
        encoded = {m: enc.encode(inputs[m]) for m, enc in self.encoders.items()}
        fused = self.fusion(encoded, full_mask(inputs, x.mask, list(self.encoders)))
        return fused[:, :, None, None]


class TrunkLayer(nn.Module):
    """Linear + ReLU on a [B, C, 1, 1] map (the fused vector in the stage layout)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.linear = nn.Linear(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x.flatten(1)))[:, :, None, None]


class FusedEncoder(StagedEncoder):
    def __init__(self, encoders: dict[str, nn.Module], fusion: nn.Module):
        super().__init__()
        widths = [fusion.out_dim, *fusion.trunk]
        self.stages = nn.ModuleList([EncodeAndFuse(encoders, fusion)] +
                                    [TrunkLayer(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.stage_channels = tuple(widths)
        self.in_channels = fusion.out_dim  # what the stage-wise gates read when nothing is shared below
        self.project = nn.Flatten()
        self.out_dim = widths[-1]

    @property
    def encoders(self) -> nn.ModuleDict:
        return self.stages[0].encoders

    @property
    def fusion(self) -> nn.Module:
        return self.stages[0].fusion


class LateFusion(MultiTaskModel):
    """One multi-task model per modality; per task, predictions are combined over present modalities.

    `combine=mean` averages the predictions (logits for classification tasks, i.e. a product of the
    modalities' class distributions up to normalisation); `combine=learned` learns a logit per task and
    modality, softmax-normalised over the modalities a sample has. Each modality's model has its own
    shared parameters; the combination weights of task t are task t's own.
    """

    def __init__(self, models: dict[str, MultiTaskModel], tasks: dict, combine: str = "mean"):
        super().__init__()
        from mtlrun.errors import UsageError

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
