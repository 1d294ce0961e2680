"""Hard parameter sharing: one encoder shared by all tasks, one head per task."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mtlrun.models.base import MultiTaskModel
from mtlrun.models.heads import make_heads


class HardParameterSharing(MultiTaskModel):
    def __init__(self, make_encoder: Callable[[], nn.Module], tasks: dict, modality: str | None,
                 head_hidden: int = 0, head_dropout: float = 0.0):
        super().__init__()
        self.modality = modality
        self.encoder = make_encoder()
        self.heads = make_heads(tasks, self.encoder, head_hidden, head_dropout, arch="hps")

    def forward(self, inputs, return_shared=False, modality_mask=None):
        shared = self.encoder(self.encoder_input(inputs, modality_mask))
        preds = {name: head(shared) for name, head in self.heads.items()}
        return (preds, shared) if return_shared else preds
