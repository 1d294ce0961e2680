"""The fusion contract and the public helpers a fusion is built from.

Contract (mtlrun.models.multimodal.FusedEncoder calls it):
    fusion = SomeFusion(dims={modality: out_dim}, token_dims={modality: token_dim}, dim=..., trunk=..., ...)
    fused = fusion(encoded, mask)   # encoded: {modality: Encoded}, mask: {modality: BoolTensor[B]}
    fused.shape == (B, fusion.out_dim)
`mask[m][b]` is False where sample b lacks modality m: a missing modality never contributes features
(its encoding is computed but must not influence the output). `trunk` is the widths of the MLP the
FusedEncoder puts after the fusion ([] = none); the Fusion only stores it.

How the helpers here keep that promise: every input of a missing modality (its vector, its tokens) and
every padded token is replaced by exact zeros with `masked_fill` before anything reads it (not multiplied
by the mask: 0 * inf and 0 * nan are nan, and an encoder fed an all-zero "missing" input may well produce
those), and whatever a modality contributes downstream is masked again (projection biases, attention
keys, softmax weights). So the output is bit-for-bit independent of a missing modality's encoding, and a
sample with every modality missing gets a finite output (zeros, or a learned constant where a formula
has one, e.g. a Concat's bias). No helper loops over samples or calls `.item()`; all run under autocast.

A fusion that combines the predictions of whole per-modality models instead of encodings (late fusion)
declares `combines_predictions = True`; `build_model` then hands it `models=` and `tasks=` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlrun.checks import check_dropout, check_range, is_int
from mtlrun.errors import UsageError
from mtlrun.models.backbone.base import Encoded, masked_mean  # noqa: F401 - a fusion helper too


class Fusion(nn.Module):
    """Base of the feature fusions: checks and stores `dims`, `token_dims`, `dim` and `trunk`.

    The option's name in messages (`fusion=<name>`) is the module's: fusion/<name>.py is built by
    configs/fusion/<name>.yaml.
    """

    combines_predictions = False  # True: a late fusion of whole models' predictions (see the module doc)
    needs_tokens = False  # True: `encoded[m].tokens` is read (token_dims must then cover every modality)
    min_modalities = 1  # fusions that combine one modality with another need 2
    out_dim: int

    def __init__(self, dims: dict[str, int], token_dims: dict[str, int], dim: int = 128,
                 trunk: Sequence[int] = (256,)):
        super().__init__()
        self.modalities = list(dims)
        self.dims, self.token_dims = dict(dims), dict(token_dims)
        self.dim = int_option("dim", dim)
        if isinstance(trunk, (str, bytes)) or not isinstance(trunk, Sequence) \
                or not all(is_int(w) and w > 0 for w in trunk):
            raise UsageError(f"fusion.trunk={trunk!r}: must be a list of positive layer widths (the MLP after "
                             f"the fusion), e.g. fusion.trunk=[256]; [] = none")
        self.trunk = tuple(int(w) for w in trunk)
        name = type(self).__module__.rpartition(".")[2]
        if len(self.modalities) < self.min_modalities:
            raise UsageError(
                f"fusion={name} needs at least {self.min_modalities} modalities, but the model gets "
                f"{len(self.modalities)} ({', '.join(self.modalities) or 'none'}): select more with "
                f"data.modalities, or pick a fusion that takes any number (e.g. fusion=concat)")
        if self.needs_tokens:
            lacking = [m for m in self.modalities if m not in self.token_dims]
            if lacking:
                raise ValueError(f"fusion={name} reads token sequences but token_dims lacks {lacking}")

    def forward(self, encoded: dict[str, Encoded], mask: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class Projected(Fusion):
    """A Linear(dims[m] -> width) per modality (width = dim unless `project_dim`), under `project[m]`."""

    def __init__(self, dims, token_dims, dim=128, trunk=(256,), project_dim: int | None = None):
        super().__init__(dims, token_dims, dim, trunk)
        width = self.dim if project_dim is None else project_dim
        self.project = nn.ModuleDict({m: nn.Linear(d, width) for m, d in self.dims.items()})

    def projection(self, m: str, encoded: dict[str, Encoded], mask: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, width]: modality m's projection, exact zeros where it is missing."""
        return project_present(self.project[m], encoded[m].vector, mask[m].bool())

    def projections(self, encoded, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, M, width] projections, exact zeros for missing modalities; [B, M] presence)."""
        stacked = torch.stack([self.projection(m, encoded, mask) for m in self.modalities], 1)
        return stacked, present_matrix(mask, self.modalities)


# ------------------------------------------------------------------------------------------ options

def int_option(key: str, value, minimum: int = 1) -> int:
    """`fusion.<key>` as an integer >= minimum, or a UsageError naming it."""
    return check_range(f"fusion.{key}", value, minimum)


def attention_options(heads, dropout, dim: int) -> tuple[int, float]:
    """(heads, dropout) of an attention fusion: heads must divide dim, dropout in [0, 1)."""
    heads = int_option("heads", heads)
    if dim % heads:
        divisors = [h for h in (1, 2, 4, 8, 16) if dim % h == 0]
        raise UsageError(f"fusion.heads={heads} does not divide fusion.dim={dim} (each head gets dim / heads "
                         f"features); e.g. fusion.heads={divisors[-1]}")
    return heads, check_dropout("fusion.dropout", dropout)


def transformer(dim: int, layers, heads, ff_mult, dropout) -> nn.TransformerEncoder:
    """The checked options `layers`, `heads`, `ff_mult` (feed-forward width = ff_mult * dim) and `dropout`
    as a pre-LN transformer encoder over [B, N, dim] sequences.

    Pre-LN (norm_first) trains stably without warm-up; the final LayerNorm closes the pre-LN stack.
    Nested tensors do not support norm_first (and would warn): off.
    """
    layers, ff_mult = int_option("layers", layers), int_option("ff_mult", ff_mult)
    heads, dropout = attention_options(heads, dropout, dim)
    layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ff_mult * dim, dropout=dropout,
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)


# ---------------------------------------------------------------------------------------- masking

def zero_missing(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """x [B, ...] with the rows of samples where `present` [B] is False set to exact zeros."""
    return x.masked_fill(~present.view(-1, *([1] * (x.dim() - 1))), 0)


def project_present(layer: nn.Module, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """layer(x) with missing rows zeroed on the way in (no nan/inf can leak through the matmul) and on the
    way out (no bias either)."""
    return zero_missing(layer(zero_missing(x, present)), present)


def present_matrix(mask: dict[str, torch.Tensor], modalities: Sequence[str]) -> torch.Tensor:
    """[B, M] bool, in the order of `modalities`."""
    return torch.stack([mask[m].bool() for m in modalities], 1)


def token_valid(enc: Encoded, present: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the token is real (token_mask) and its modality is present."""
    valid = present.unsqueeze(1).expand(enc.tokens.shape[:2])
    return valid if enc.token_mask is None else valid & enc.token_mask.bool()


def clean_tokens(enc: Encoded, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens with every missing or padded position zeroed, their validity [B, L])."""
    valid = token_valid(enc, present)
    return enc.tokens.masked_fill(~valid.unsqueeze(-1), 0), valid


def masked_softmax(logits: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over the valid entries along `dim`, exact zeros elsewhere (and where none is valid).

    A plain -inf fill gives nan for an all-invalid slice (and nan gradients); those slices get finite
    dummy logits instead, and their weights are then zeroed.
    """
    logits = logits.masked_fill(~valid, float("-inf"))
    logits = torch.where(valid.any(dim, keepdim=True), logits, torch.zeros_like(logits))
    return torch.softmax(logits, dim).masked_fill(~valid, 0)


def key_padding(valid: torch.Tensor) -> torch.Tensor:
    """`key_padding_mask` (True = ignore) for attention over positions with validity [B, N].

    nn.MultiheadAttention returns nan for a query whose keys are all masked; a sample with nothing
    valid therefore attends over all its positions (every one holds zeroed inputs, so the result is
    finite and independent of the missing encodings) and the caller discards that result.
    """
    return ~valid & valid.any(1, keepdim=True)


def with_one(h: torch.Tensor) -> torch.Tensor:
    """[h; 1]: the constant keeps the lower-order (unimodal, bimodal, ...) terms in a product."""
    return torch.cat([h, h.new_ones(h.shape[0], 1)], 1)
