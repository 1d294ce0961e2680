"""EmbraceNet (Choi & Lee 2019, "EmbraceNet: A robust deep learning architecture for multimodal
classification"):

    d_m = ReLU(W_m x_m + b_m)                           (docking layer, per modality)
    p_m = w_m [m present] / sum_n w_n [n present]       (w: `probabilities`, uniform by default)
    training: out_k = d_{r_k, k},  r_k ~ Categorical(p) independently per sample and feature k
    eval:     out = sum_m p_m d_m                        (the expectation: deterministic)

Each feature comes from exactly one present modality, so the network learns features that survive any
modality going missing (the paper's multimodal dropout). A sample with no modality gets zeros.
Options: probabilities: null (uniform), or positive per-modality weights, a mapping {modality: weight}
(entries for modalities the model does not get are ignored) or a list in the order of the modalities;
renormalised over each sample's present modalities.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mtlrun.errors import UsageError
from mtlrun.models.fusion.base import Fusion, present_matrix, project_present


class Embrace(Fusion):
    """Per-modality docking layers; each feature drawn from one present modality (training) or their
    expectation (eval)."""

    def __init__(self, dims, token_dims, dim=128, trunk=(256,),
                 probabilities: Mapping[str, float] | Sequence[float] | None = None):
        super().__init__(dims, token_dims, dim, trunk)
        self.dock = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, self.dim), nn.ReLU())
                                   for m, d in self.dims.items()})
        # not persistent: the config decides, and a checkpoint from another setting still loads
        self.register_buffer("weights", self._weights(probabilities), persistent=False)
        self.out_dim = self.dim

    def _weights(self, probabilities) -> torch.Tensor:
        usage = (f"fusion.probabilities={probabilities!r}: must be null (uniform), a positive weight per "
                 f"modality {{{', '.join(f'{m}: 1.0' for m in self.modalities)}}}, or a list of "
                 f"{len(self.modalities)} positive weights in the order {', '.join(self.modalities)}")
        if probabilities is None:
            return torch.ones(len(self.modalities))
        if isinstance(probabilities, Mapping):
            lacking = [m for m in self.modalities if m not in probabilities]
            if lacking:
                raise UsageError(f"{usage}; no weight for {', '.join(lacking)}")
            values = [probabilities[m] for m in self.modalities]
        elif isinstance(probabilities, Sequence) and not isinstance(probabilities, (str, bytes)):
            values = list(probabilities)
            if len(values) != len(self.modalities):
                raise UsageError(f"{usage}; got {len(values)}")
        else:
            raise UsageError(usage)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                   for v in values):
            raise UsageError(usage)
        return torch.tensor([float(v) for v in values])

    def docked(self, encoded, mask) -> torch.Tensor:
        """[B, M, dim]: every modality's docked features, exact zeros for missing modalities."""
        return torch.stack([project_present(self.dock[m], encoded[m].vector, mask[m].bool())
                            for m in self.modalities], 1)

    def selection(self, mask) -> torch.Tensor:
        """[B, M]: each sample's selection probabilities (0 for missing modalities; rows sum to 1 or 0)."""
        present = present_matrix(mask, self.modalities)
        w = self.weights.expand(present.shape).masked_fill(~present, 0)
        return w / w.sum(1, keepdim=True).clamp(min=torch.finfo(w.dtype).tiny)

    def forward(self, encoded, mask):
        docked = self.docked(encoded, mask)
        p = self.selection(mask)
        if self.training:
            # a sample with nothing present may draw anything: its docked features are all zero
            drawable = torch.where(p.sum(1, keepdim=True) > 0, p, torch.ones_like(p))
            choice = torch.multinomial(drawable, self.dim, replacement=True)  # [B, dim]; never a p = 0 one
            return docked.gather(1, choice.unsqueeze(1)).squeeze(1)
        return (p.unsqueeze(-1).to(docked.dtype) * docked).sum(1)
