"""Multi-gate Mixture-of-Experts (Ma et al. 2018) on an image encoder.

The first `shared_stages` stages of the encoder are a shared bottom. An expert is a copy of the remaining
stages plus the projection (its own weights, from a fresh `make_encoder()`), so it maps the bottom feature
map to an [B, out_dim] vector. Each task t has a gate, softmax(W_t pool(bottom) + b_t) over the
`num_experts` experts, computed from the globally average-pooled bottom features (the raw input when
`shared_stages=0`), and its head reads sum_e gate_t[e] * expert_e.
`shared_stages` can be 0 (experts are whole encoders) up to the number of stages (experts are copies of
the projection only: the classic MMoE on top of a shared feature extractor).

The shared representation is [expert outputs stacked as [B, E, out_dim], the pooled gate input] (the
latter only when there is a shared bottom); gates and heads are the task parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtlrun.models.base import MultiTaskModel
from mtlrun.models.arch._common import (Gate, check_gate_input, check_range, check_raw_gate_input, make_heads,
                                             mix, pool, staged)


def expert_from(encoder: nn.Module, first_stage: int) -> nn.Sequential:
    """`encoder`'s stages from `first_stage` on, then its projection."""
    return nn.Sequential(*encoder.stages[first_stage:], encoder.project)


class MMoE(MultiTaskModel):
    def __init__(self, make_encoder: Callable[[], nn.Module], tasks: dict, modality: str | None, num_experts: int = 3,
                 shared_stages: int = 1, head_hidden: int = 0, head_dropout: float = 0.0):
        super().__init__()
        self.modality = modality
        encoder = staged(make_encoder(), "mmoe")
        num_stages = len(encoder.stages)
        check_range("arch.num_experts", num_experts, 1)
        check_range("arch.shared_stages", shared_stages, 0, num_stages,
                    f" (the backbone {type(encoder).__name__} has {num_stages} stages)")
        check_gate_input(modality, shared_stages, "mmoe")
        self.shared_stages = shared_stages
        self.bottom = nn.Sequential(*encoder.stages[:shared_stages])
        copies = [encoder] + [staged(make_encoder(), "mmoe") for _ in range(num_experts - 1)]
        self.experts = nn.ModuleList([expert_from(e, shared_stages) for e in copies])
        gate_in = encoder.stage_channels[shared_stages - 1] if shared_stages else encoder.in_channels
        self.gates = nn.ModuleDict({name: Gate(gate_in, num_experts) for name in tasks})
        self.heads = make_heads(tasks, encoder, head_hidden, head_dropout, arch="mmoe")

    def task_modules(self, task):
        return [self.heads[task], self.gates[task]]

    def forward(self, inputs, return_shared=False, modality_mask=None):
        x = self.encoder_input(inputs, modality_mask)
        if not self.shared_stages:
            check_raw_gate_input(x, "mmoe")
        bottom = self.bottom(x)
        experts = torch.stack([expert(bottom) for expert in self.experts], dim=1)  # [B, E, D]
        pooled = pool(bottom)
        preds = {name: self.heads[name](mix(gate(pooled), experts)) for name, gate in self.gates.items()}
        if not return_shared:
            return preds
        return preds, ([experts, pooled] if self.shared_stages else [experts])
