"""Hard parameter sharing: one encoder shared by all tasks, one head per task.

With a token-level task (mtlrun.tasks.Tagging) the shared representation is the text encoder's token
sequence [B, L, D] (`encoder.tokens`), and the sentence-level tasks' heads pool it themselves
(mtlrun.models.heads.make_token_heads)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mtlrun.models.base import MultiTaskModel
from mtlrun.models.heads import make_heads, make_token_heads


class HardParameterSharing(MultiTaskModel):
    def __init__(self, make_encoder: Callable[[], nn.Module], tasks: dict, modality: str | None,
                 head_hidden: int = 0, head_dropout: float = 0.0):
        super().__init__()
        self.modality = modality
        self.encoder = make_encoder()
        self.token_level = any(getattr(task, "token_level", False) for task in tasks.values())
        if self.token_level:
            self.heads = make_token_heads(tasks, self.encoder, head_hidden, head_dropout)
            # the heads pool the tokens themselves: the encoder's own pooled projection would be a shared
            # parameter no loss reaches (no gradient; DDP and the Jacobian methods refuse those)
            self.encoder.project = nn.Identity()
        else:
            self.heads = make_heads(tasks, self.encoder, head_hidden, head_dropout, arch="hps")

    def forward(self, inputs, return_shared=False, modality_mask=None):
        x = self.encoder_input(inputs, modality_mask)
        if self.token_level:
            shared, mask = self.encoder.tokens(x)
            preds = {name: head(shared, mask) for name, head in self.heads.items()}
        else:
            shared = self.encoder(x)
            preds = {name: head(shared) for name, head in self.heads.items()}
        return (preds, shared) if return_shared else preds
