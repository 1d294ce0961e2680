"""Tabular encoder: categorical embeddings + numeric features -> MLP, with FT-Transformer-style tokens.

It reads the tabular layout of mtlrun.data.base.ModalityInfo: float [B, N + K], the N numeric features
(expected standardised by the data) and then K categorical codes stored as floats, 0 = missing/unknown
and 1..cardinality the categories seen in training.

This is a plain `Encoder`, not a `StagedEncoder`: an MLP has no 4-D feature maps for the stage-wise
architectures to take apart; use arch=hps or arch=soft with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlrun.checks import check_range, is_int
from mtlrun.errors import UsageError
from mtlrun.models.backbone.base import Encoded, Encoder

_KEY = "backbone.tabular"


class TabularMLP(Encoder):
    """[numeric, embedding of each categorical] -> (Linear-BN-ReLU-Dropout) x len(hidden) -> Linear + ReLU.

    Each categorical column k has an nn.Embedding(cardinality_k + 1, embed_dim) whose row 0 is
    missing/unknown. The codes are read from the float columns with round(), and a code outside
    0..cardinality_k (a category that only appears in evaluation data, a negative or NaN code) is mapped to
    0, so an unseen category reads as "unknown" instead of indexing out of range. NaN numeric values read
    as 0 (the mean, for standardised features).

    Tokens (`encode`), one per feature as in FT-Transformer's feature tokenizer (Gorishniy et al. 2021):
    numeric feature i -> x_i * w_i + b_i, categorical column k -> its embedding + b_k, all of size
    `embed_dim` (= token_dim). The categorical embeddings are shared with the MLP; w, b are used by the
    tokens only.
    """

    def __init__(self, num_numeric: int, cardinalities: Sequence[int] = (), embed_dim: int = 8,
                 hidden: Sequence[int] = (128, 128), dropout: float = 0.0, out_dim: int = 128,
                 batch_norm: bool = True):
        super().__init__()
        cardinalities = tuple(cardinalities or ())
        if not isinstance(num_numeric, int) or isinstance(num_numeric, bool) or num_numeric < 0 \
                or not all(is_int(c) and c >= 1 for c in cardinalities):
            raise UsageError(f"the tabular data gives num_numeric={num_numeric}, cardinalities={list(cardinalities)}; "
                             f"a tabular encoder needs an integer >= 0 and a list of integers >= 1")
        if num_numeric == 0 and not cardinalities:
            raise UsageError("the tabular data has no feature (num_numeric=0 and no categorical column)")
        check_range(f"{_KEY}.embed_dim", embed_dim, 1)
        check_range(f"{_KEY}.out_dim", out_dim, 1)
        try:
            hidden = tuple(hidden or ())
        except TypeError:
            hidden = (hidden,)
        if not all(is_int(h) and h >= 1 for h in hidden):
            raise UsageError(f"{_KEY}.hidden={list(hidden)}: must be a list of positive integers (the widths of "
                             f"the hidden layers; [] for none)")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise UsageError(f"{_KEY}.dropout={dropout}: must be a number in [0, 1)")
        if not isinstance(batch_norm, bool):
            raise UsageError(f"{_KEY}.batch_norm={batch_norm}: must be true or false")
        self.num_numeric, self.cardinalities, self.embed_dim = num_numeric, cardinalities, embed_dim
        self.register_buffer("max_code", torch.tensor(cardinalities, dtype=torch.long), persistent=False)
        self.embeddings = nn.ModuleList([nn.Embedding(c + 1, embed_dim) for c in cardinalities])

        layers, width = [], num_numeric + embed_dim * len(cardinalities)
        for h in hidden:
            layers += [nn.Linear(width, h, bias=not batch_norm), *([nn.BatchNorm1d(h)] if batch_norm else []),
                       nn.ReLU(inplace=True), nn.Dropout(float(dropout))]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, out_dim), nn.ReLU(inplace=True))

        # feature tokenizer: x_i * w_i + b_i for numeric features, embedding + b_k for categorical ones
        # (init as in the FT-Transformer reference code: uniform in +-1/sqrt(d))
        bound = embed_dim ** -0.5
        self.numeric_weight = nn.Parameter(torch.empty(num_numeric, embed_dim).uniform_(-bound, bound))
        self.token_bias = nn.Parameter(torch.empty(num_numeric + len(cardinalities), embed_dim).uniform_(-bound, bound))
        self.token_dim = embed_dim
        self.out_dim = out_dim

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, N + K] -> numeric [B, N] (NaN -> 0) and embedding indices [B, K] (invalid codes -> 0)."""
        expected = self.num_numeric + len(self.cardinalities)
        if x.dim() != 2 or x.shape[1] != expected:
            raise ValueError(f"TabularMLP expects [B, {expected}] inputs ({self.num_numeric} numeric + "
                             f"{len(self.cardinalities)} categorical), got {tuple(x.shape)}")
        numeric = torch.nan_to_num(x[:, :self.num_numeric].float(), nan=0.0)
        codes = x[:, self.num_numeric:]
        # compare as floats before casting: NaN and huge values have no meaningful long
        valid = (codes >= -0.5) & (codes < self.max_code.to(codes.dtype) + 0.5)
        index = torch.where(valid, codes, torch.zeros_like(codes)).round().long()
        return numeric, index

    def _embedded(self, index: torch.Tensor) -> list[torch.Tensor]:
        return [emb(index[:, k]) for k, emb in enumerate(self.embeddings)]  # a loop over columns, not samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        numeric, index = self.split(x)
        return self.mlp(torch.cat([numeric, *self._embedded(index)], dim=1))

    def encode(self, x: torch.Tensor) -> Encoded:
        numeric, index = self.split(x)
        embedded = self._embedded(index)
        vector = self.mlp(torch.cat([numeric, *embedded], dim=1))
        parts = [numeric.unsqueeze(-1) * self.numeric_weight]  # [B, N, E]
        if embedded:
            parts.append(torch.stack(embedded, dim=1))  # [B, K, E]
        tokens = torch.cat(parts, dim=1) + self.token_bias
        return Encoded(vector, tokens, None)
