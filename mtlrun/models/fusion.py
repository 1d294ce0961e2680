"""Fusion strategies: per-modality encodings -> one vector per sample (`fusion=` config group).

Contract (mtlrun.models.multimodal.FusedEncoder calls it):
    fusion = SomeFusion(dims={modality: out_dim}, token_dims={modality: token_dim}, dim=..., trunk=..., ...)
    fused = fusion(encoded, mask)   # encoded: {modality: Encoded}, mask: {modality: BoolTensor[B]}
    fused.shape == (B, fusion.out_dim)
`mask[m][b]` is False where sample b lacks modality m: a missing modality never contributes features
(its encoding is computed but must not influence the output). `trunk` is the widths of the MLP the
FusedEncoder puts after the fusion ([] = none); the Fusion only stores it.

How the fusions here keep that promise: every input of a missing modality (its vector, its tokens) and
every padded token is replaced by exact zeros with `masked_fill` before anything reads it (not multiplied
by the mask: 0 * inf and 0 * nan are nan, and an encoder fed an all-zero "missing" input may well produce
those), and whatever a modality contributes downstream is masked again (projection biases, attention
keys, softmax weights). So the output is bit-for-bit independent of a missing modality's encoding, and a
sample with every modality missing gets a finite output (zeros, or a learned constant where a formula
has one, e.g. a Concat's bias).

Fusions: Early, Concat, Sum, Mean, Weighted, Gated, FiLM, Attention, CrossAttention, Tensor, LowRank,
Embrace. None loops over samples (loops over the few modalities only), none calls `.item()`, and all run
under autocast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtlrun.errors import UsageError
from mtlrun.checks import check_dropout, check_range, is_int
from mtlrun.models.encoders.base import Encoded

# Tensor fusion's outer product has (rank_dim + 1) ** M features: refuse sizes whose output layer alone
# would be a few hundred million parameters (low_rank is the answer for those).
_MAX_TENSOR_FEATURES = 1 << 20


# ------------------------------------------------------------------------------------------------ checks

def _int_option(key: str, value, minimum: int = 1) -> int:
    return check_range(f"fusion.{key}", value, minimum)


def _dropout_option(value) -> float:
    return check_dropout("fusion.dropout", value)


def _heads_option(heads, dim: int) -> int:
    heads = _int_option("heads", heads)
    if dim % heads:
        divisors = [h for h in (1, 2, 4, 8, 16) if dim % h == 0]
        raise UsageError(f"fusion.heads={heads} does not divide fusion.dim={dim} (each head gets dim / heads "
                         f"features); e.g. fusion.heads={divisors[-1]}")
    return heads


# ----------------------------------------------------------------------------------------------- helpers

def _zero_missing(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """x [B, ...] with the rows of samples where `present` [B] is False set to exact zeros."""
    return x.masked_fill(~present.view(-1, *([1] * (x.dim() - 1))), 0)


def _token_valid(enc: Encoded, present: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the token is real (token_mask) and its modality is present."""
    valid = present.unsqueeze(1).expand(enc.tokens.shape[:2])
    return valid if enc.token_mask is None else valid & enc.token_mask.bool()


def _clean_tokens(enc: Encoded, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens with every missing or padded position zeroed, their validity [B, L])."""
    valid = _token_valid(enc, present)
    return enc.tokens.masked_fill(~valid.unsqueeze(-1), 0), valid


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of values [B, N, D] over the valid [B, N] positions; zeros where none is valid."""
    total = values.masked_fill(~valid.unsqueeze(-1), 0).sum(1)
    return total / valid.sum(1, keepdim=True).clamp(min=1).to(total.dtype)


def _masked_softmax(logits: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over the valid entries along `dim`, exact zeros elsewhere (and where none is valid).

    A plain -inf fill gives nan for an all-invalid slice (and nan gradients); those slices get finite
    dummy logits instead, and their weights are then zeroed.
    """
    logits = logits.masked_fill(~valid, float("-inf"))
    logits = torch.where(valid.any(dim, keepdim=True), logits, torch.zeros_like(logits))
    return torch.softmax(logits, dim).masked_fill(~valid, 0)


def _key_padding(valid: torch.Tensor) -> torch.Tensor:
    """`key_padding_mask` (True = ignore) for attention over positions with validity [B, N].

    nn.MultiheadAttention returns nan for a query whose keys are all masked; a sample with nothing
    valid therefore attends over all its positions (every one holds zeroed inputs, so the result is
    finite and independent of the missing encodings) and the caller discards that result.
    """
    return ~valid & valid.any(1, keepdim=True)


def _transformer(dim: int, heads: int, layers: int, ff_mult: int, dropout: float) -> nn.TransformerEncoder:
    # Pre-LN (norm_first) trains stably without warm-up; the final LayerNorm closes the pre-LN stack.
    # Nested tensors do not support norm_first (and would warn): off.
    layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ff_mult * dim, dropout=dropout,
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)


def _present(mask: dict[str, torch.Tensor], modalities: Sequence[str]) -> torch.Tensor:
    """[B, M] bool, in the order of `modalities`."""
    return torch.stack([mask[m].bool() for m in modalities], 1)


# ------------------------------------------------------------------------------------------------- base

class Fusion(nn.Module):
    needs_tokens = False  # True: `encoded[m].tokens` is read (token_dims must then cover every modality)
    min_modalities = 1  # fusions that combine one modality with another need 2
    name = "fusion"  # the option's name in the `fusion` config group, for messages
    out_dim: int

    def __init__(self, dims: dict[str, int], token_dims: dict[str, int], dim: int = 128,
                 trunk: Sequence[int] = (256,)):
        super().__init__()
        self.modalities = list(dims)
        self.dims, self.token_dims = dict(dims), dict(token_dims)
        self.dim = _int_option("dim", dim)
        if isinstance(trunk, (str, bytes)) or not isinstance(trunk, Sequence) \
                or not all(is_int(w) and w > 0 for w in trunk):
            raise UsageError(f"fusion.trunk={trunk!r}: must be a list of positive layer widths (the MLP after "
                             f"the fusion), e.g. fusion.trunk=[256]; [] = none")
        self.trunk = tuple(int(w) for w in trunk)
        if len(self.modalities) < self.min_modalities:
            raise UsageError(
                f"fusion={self.name} needs at least {self.min_modalities} modalities, but the model gets "
                f"{len(self.modalities)} ({', '.join(self.modalities) or 'none'}): select more with "
                f"data.modalities, or pick a fusion that takes any number (e.g. fusion=concat)")
        if self.needs_tokens:
            lacking = [m for m in self.modalities if m not in self.token_dims]
            if lacking:
                raise ValueError(f"fusion={self.name} reads token sequences but token_dims lacks {lacking}")

    def forward(self, encoded: dict[str, Encoded], mask: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class _Projected(Fusion):
    """A Linear(dims[m] -> dim) per modality; `projections` stacks them with missing ones zeroed."""

    def __init__(self, dims, token_dims, dim=128, trunk=(256,), project_dim: int | None = None):
        super().__init__(dims, token_dims, dim, trunk)
        width = self.dim if project_dim is None else project_dim
        self.project = nn.ModuleDict({m: nn.Linear(d, width) for m, d in self.dims.items()})

    def projection(self, m: str, encoded: dict[str, Encoded], mask: dict[str, torch.Tensor]) -> torch.Tensor:
        present = mask[m].bool()
        # zero the input (no nan/inf can leak through the matmul) and the output (no bias either)
        return _zero_missing(self.project[m](_zero_missing(encoded[m].vector, present)), present)

    def projections(self, encoded, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, M, width] projections, exact zeros for missing modalities; [B, M] presence)."""
        stacked = torch.stack([self.projection(m, encoded, mask) for m in self.modalities], 1)
        return stacked, _present(mask, self.modalities)


# ------------------------------------------------------------------------------------- vector fusions

class Early(Fusion):
    """Early fusion: one joint transformer over every modality's token sequence.

        s_m = tokens_m W_m + e_m          (per-position features before pooling, projected to dim,
                                           plus a learned modality embedding e_m)
        H = TransformerEncoder([s_1; s_2; ...; s_M])   (one sequence; missing modalities and padded
                                                        tokens masked as keys)
        out = mean of H over the real tokens of the present modalities

    Early (feature-level) vs late (decision-level) fusion: Snoek, Worring & Smeulders 2005, "Early versus
    late fusion in semantic video analysis"; the joint ("single-stream") transformer over concatenated
    modality sequences as in UNITER (Chen et al. 2020). Within a modality the tokens carry only the
    positional information the encoder put in them. Every token attends to every other, so the cost is
    quadratic in the total number of tokens. Options: layers, heads (must divide dim), ff_mult
    (feed-forward width = ff_mult * dim), dropout.
    """

    needs_tokens = True
    name = "early"

    def __init__(self, dims, token_dims, dim=128, trunk=(256,), layers: int = 1, heads: int = 4,
                 ff_mult: int = 2, dropout: float = 0.0):
        super().__init__(dims, token_dims, dim, trunk)
        layers, ff_mult = _int_option("layers", layers), _int_option("ff_mult", ff_mult)
        heads, dropout = _heads_option(heads, self.dim), _dropout_option(dropout)
        self.project = nn.ModuleDict({m: nn.Linear(self.token_dims[m], self.dim) for m in self.modalities})
        # the encoders' token spaces are unrelated; the embedding tells the joint attention which is which
        self.embedding = nn.Parameter(torch.randn(len(self.modalities), self.dim) * 0.02)
        self.encoder = _transformer(self.dim, heads, layers, ff_mult, dropout)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        sequences, valids = [], []
        for i, m in enumerate(self.modalities):
            tokens, valid = _clean_tokens(encoded[m], mask[m].bool())
            sequences.append(self.project[m](tokens) + self.embedding[i])
            valids.append(valid)
        x, valid = torch.cat(sequences, 1), torch.cat(valids, 1)
        return _masked_mean(self.encoder(x, src_key_padding_mask=_key_padding(valid)), valid)


class Concat(Fusion):
    """Concatenation: out = ReLU(W [x_1; ...; x_M] + b), x_m = 0 for a missing modality.

    The baseline feature-level fusion (Baltrusaitis, Ahuja & Morency 2019, "Multimodal Machine Learning:
    A Survey and Taxonomy"). Zero-filling keeps the layout fixed; the bias is shared, so a sample with
    every modality missing gets ReLU(b).
    """

    name = "concat"

    def __init__(self, dims, token_dims, dim=128, trunk=(256,)):
        super().__init__(dims, token_dims, dim, trunk)
        self.project = nn.Linear(sum(self.dims.values()), self.dim)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        x = torch.cat([_zero_missing(encoded[m].vector, mask[m].bool()) for m in self.modalities], 1)
        return F.relu(self.project(x))


class Sum(_Projected):
    """Sum: out = sum over present m of (W_m x_m + b_m).

    Additive fusion (Baltrusaitis et al. 2019). The magnitude grows with the number of present modalities;
    `mean` normalises it.
    """

    name = "sum"

    def __init__(self, dims, token_dims, dim=128, trunk=(256,)):
        super().__init__(dims, token_dims, dim, trunk)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        return self.projections(encoded, mask)[0].sum(1)


class Mean(_Projected):
    """Mean: out = (1 / |P|) sum over present m in P of (W_m x_m + b_m); zeros when P is empty.

    Averaging over the available modalities as in HeMIS (Havaei et al. 2016, "HeMIS: Hetero-Modal Image
    Segmentation"): the output scale does not depend on how many modalities a sample has.
    """

    name = "mean"

    def __init__(self, dims, token_dims, dim=128, trunk=(256,)):
        super().__init__(dims, token_dims, dim, trunk)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        return _masked_mean(*self.projections(encoded, mask))


class Weighted(_Projected):
    """Learned modality weights: out = sum over present m of w_m (W_m x_m + b_m),
    w = softmax of the learned logits a_m over the present modalities only.

    Scalar per-modality attention weights (Baltrusaitis et al. 2019); renormalising over the present ones
    keeps the weights a convex combination whatever is missing. The logits start at 0 (= Mean).
    """

    name = "weighted"

    def __init__(self, dims, token_dims, dim=128, trunk=(256,)):
        super().__init__(dims, token_dims, dim, trunk)
        self.logits = nn.Parameter(torch.zeros(len(self.modalities)))
        self.out_dim = self.dim

    def weights(self, mask: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, M]: each sample's modality weights (zeros for missing modalities; rows sum to 1 or 0)."""
        present = _present(mask, self.modalities)
        return _masked_softmax(self.logits.expand(present.shape), present, 1)

    def forward(self, encoded, mask):
        h, _ = self.projections(encoded, mask)
        return (self.weights(mask).unsqueeze(-1).to(h.dtype) * h).sum(1)


class Gated(Fusion):
    """Gated Multimodal Unit (Arevalo et al. 2017, "Gated Multimodal Units for Information Fusion"),
    generalised from 2 to M modalities:

        h_m = tanh(W_m x_m)
        z = softmax over the present m of (W_z [x_1; ...; x_M])_m     (per feature: z is [B, M, dim])
        out = sum_m z_m * h_m

    With two modalities and one logit fixed at 0 this is the paper's sigmoid gate z h_1 + (1 - z) h_2.
    Missing x_m are zeroed in the gate input and get gate 0.
    """

    name = "gated"

    def __init__(self, dims, token_dims, dim=128, trunk=(256,)):
        super().__init__(dims, token_dims, dim, trunk)
        self.hidden = nn.ModuleDict({m: nn.Linear(d, self.dim) for m, d in self.dims.items()})
        self.gate = nn.Linear(sum(self.dims.values()), len(self.modalities) * self.dim)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        xs = [_zero_missing(encoded[m].vector, mask[m].bool()) for m in self.modalities]
        h = torch.stack([torch.tanh(self.hidden[m](x)) for m, x in zip(self.modalities, xs)], 1)
        logits = self.gate(torch.cat(xs, 1)).view(h.shape)
        present = _present(mask, self.modalities).unsqueeze(-1).expand(h.shape)
        return (_masked_softmax(logits, present, 1).to(h.dtype) * h).sum(1)


class FiLM(Fusion):
    """Feature-wise linear modulation (Perez et al. 2018, "FiLM: Visual Reasoning with a General
    Conditioning Layer") of one primary modality by the others:

        p = W_p x_primary + b_p                       (0 when the primary is missing)
        c = mean over the present other m of (W_m x_m + b_m)
        out = (1 + a * gamma(c)) * p + a * beta(c),   a = 1 if any other modality is present, else 0

    gamma is the deviation from 1 (the paper's residual form), so without context the output is p
    exactly; without the primary it is beta(c). Options: primary (null = the first modality).
    """

    name = "film"
    min_modalities = 2

    def __init__(self, dims, token_dims, dim=128, trunk=(256,), primary: str | None = None):
        super().__init__(dims, token_dims, dim, trunk)
        if primary is None:
            primary = self.modalities[0]
        if primary not in self.dims:
            raise UsageError(f"fusion.primary={primary!r} is not one of the model's modalities; valid: "
                             f"{', '.join(self.modalities)} (null = the first)")
        self.primary = primary
        self.context = [m for m in self.modalities if m != primary]
        self.project_primary = nn.Linear(self.dims[primary], self.dim)
        self.project_context = nn.ModuleDict({m: nn.Linear(self.dims[m], self.dim) for m in self.context})
        self.gamma = nn.Linear(self.dim, self.dim)
        self.beta = nn.Linear(self.dim, self.dim)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        present = mask[self.primary].bool()
        p = _zero_missing(self.project_primary(_zero_missing(encoded[self.primary].vector, present)), present)
        contexts = []
        for m in self.context:
            here = mask[m].bool()
            contexts.append(_zero_missing(self.project_context[m](_zero_missing(encoded[m].vector, here)), here))
        has_context = _present(mask, self.context)
        c = _masked_mean(torch.stack(contexts, 1), has_context)
        # masked_fill (not a product with has_context) so a sample without context gets p bit for bit
        no_context = ~has_context.any(1, keepdim=True)
        gamma, beta = self.gamma(c).masked_fill(no_context, 0), self.beta(c).masked_fill(no_context, 0)
        return (1 + gamma) * p + beta


# ----------------------------------------------------------------------------------- attention fusions

class Attention(_Projected):
    """Self-attention over modality tokens:

        t_m = W_m x_m + b_m + e_m        (one token per modality, e_m a learned modality embedding)
        H = TransformerEncoder([t_1, ..., t_M])   (missing modalities masked as keys)
        out = mean of H over the present modalities

    Transformer self-attention (Vaswani et al. 2017) with each modality's pooled vector as one token.
    Options: layers, heads (must divide dim), ff_mult (feed-forward width = ff_mult * dim), dropout.
    """

    name = "attention"

    def __init__(self, dims, token_dims, dim=128, trunk=(256,), layers: int = 1, heads: int = 4,
                 ff_mult: int = 2, dropout: float = 0.0):
        super().__init__(dims, token_dims, dim, trunk)
        layers, ff_mult = _int_option("layers", layers), _int_option("ff_mult", ff_mult)
        heads, dropout = _heads_option(heads, self.dim), _dropout_option(dropout)
        self.embedding = nn.Parameter(torch.randn(len(self.modalities), self.dim) * 0.02)
        self.encoder = _transformer(self.dim, heads, layers, ff_mult, dropout)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        h, present = self.projections(encoded, mask)
        tokens = h + self.embedding  # a missing modality's token is its embedding alone, masked as a key
        return _masked_mean(self.encoder(tokens, src_key_padding_mask=_key_padding(present)), present)


class CrossAttention(Fusion):
    """Cross-modal attention: each modality's vector queries the other modalities' token sequences.

        q_m = W_m x_m + b_m
        K_m = [U_n tokens_n + c_n for every other modality n]   (missing modalities and padded tokens
                                                                  masked as keys)
        o_m = LayerNorm(q_m + MultiheadAttention_m(q_m, K_m, K_m))
        out = mean of o_m over the present modalities

    Directional cross-modal attention as in the Multimodal Transformer (Tsai et al. 2019, "Multimodal
    Transformer for Unaligned Multimodal Language Sequences") and ViLBERT's co-attention (Lu et al.
    2019), with one pooled query per modality. The per-modality key projections' biases c_n double as
    modality embeddings. A modality with no other present modality to attend to keeps LayerNorm(q_m).
    Options: heads (must divide dim), dropout.
    """

    needs_tokens = True
    name = "cross_attention"
    min_modalities = 2

    def __init__(self, dims, token_dims, dim=128, trunk=(256,), heads: int = 4, dropout: float = 0.0):
        super().__init__(dims, token_dims, dim, trunk)
        heads, dropout = _heads_option(heads, self.dim), _dropout_option(dropout)
        self.query = nn.ModuleDict({m: nn.Linear(self.dims[m], self.dim) for m in self.modalities})
        self.key = nn.ModuleDict({m: nn.Linear(self.token_dims[m], self.dim) for m in self.modalities})
        # one attention per query modality: "text reads image" and "image reads text" differ
        self.attend = nn.ModuleDict({m: nn.MultiheadAttention(self.dim, heads, dropout=dropout, batch_first=True)
                                     for m in self.modalities})
        self.norm = nn.ModuleDict({m: nn.LayerNorm(self.dim) for m in self.modalities})
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        keys, valids = {}, {}
        for m in self.modalities:
            tokens, valids[m] = _clean_tokens(encoded[m], mask[m].bool())
            keys[m] = self.key[m](tokens)
        outputs = []
        for m in self.modalities:
            present = mask[m].bool()
            q = self.query[m](_zero_missing(encoded[m].vector, present)).unsqueeze(1)
            others = [n for n in self.modalities if n != m]
            kv = torch.cat([keys[n] for n in others], 1)
            valid = torch.cat([valids[n] for n in others], 1)
            attended, _ = self.attend[m](q, kv.to(q.dtype), kv.to(q.dtype), key_padding_mask=_key_padding(valid),
                                         need_weights=False)
            attended = attended.masked_fill(~valid.any(1).view(-1, 1, 1), 0)  # nothing to attend to
            outputs.append(self.norm[m]((q + attended).squeeze(1)))
        return _masked_mean(torch.stack(outputs, 1), _present(mask, self.modalities))


# ------------------------------------------------------------------------------ multiplicative fusions

def _with_one(h: torch.Tensor) -> torch.Tensor:
    """[h; 1]: the constant keeps the lower-order (unimodal, bimodal, ...) terms in a product."""
    return torch.cat([h, h.new_ones(h.shape[0], 1)], 1)


class Tensor(_Projected):
    """Tensor Fusion Network (Zadeh et al. 2017, "Tensor Fusion Network for Multimodal Sentiment
    Analysis"):

        z_m = [W_m x_m + b_m; 1]   (size rank_dim + 1; [0; 1] for a missing modality)
        out = ReLU(W vec(z_1 (x) z_2 (x) ... (x) z_M) + b)

    The outer product holds every unimodal, bimodal, ... M-modal interaction; a missing modality's
    factor [0; 1] keeps exactly the terms of the present ones. The product has (rank_dim + 1) ** M
    features (6561 for 4 modalities at rank_dim 8): keep rank_dim small or use low_rank.
    Options: rank_dim.
    """

    name = "tensor"

    def __init__(self, dims, token_dims, dim=128, trunk=(256,), rank_dim: int = 8):
        rank_dim = _int_option("rank_dim", rank_dim)
        super().__init__(dims, token_dims, dim, trunk, project_dim=rank_dim)
        self.rank_dim = rank_dim
        features = (rank_dim + 1) ** len(self.modalities)
        if features > _MAX_TENSOR_FEATURES:
            raise UsageError(f"fusion.rank_dim={rank_dim}: the outer product of {len(self.modalities)} "
                             f"modalities would have {features} features (more than {_MAX_TENSOR_FEATURES}); "
                             f"lower fusion.rank_dim or use fusion=low_rank")
        self.out = nn.Linear(features, self.dim)
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        fused = None
        for m in self.modalities:
            z = _with_one(self.projection(m, encoded, mask))
            if fused is None:
                fused = z
            else:
                dtype = torch.promote_types(fused.dtype, z.dtype)
                fused = torch.einsum("bi,bj->bij", fused.to(dtype), z.to(dtype)).flatten(1)
        return F.relu(self.out(fused))


class LowRank(_Projected):
    """Low-rank Multimodal Fusion (Liu et al. 2018, "Efficient Low-rank Multimodal Fusion with
    Modality-Specific Factors"): Tensor fusion's weight as a rank-`rank` decomposition,

        z_m = [h_m; 1],  h_m = W_m x_m + b_m   (size rank_dim; h_m = 0 for a missing modality)
        out = sum_{r=1..rank} prod_m (F_m^r z_m) + b        (F_m^r: dim x (rank_dim + 1))

    Linear in the number of modalities instead of exponential. A missing modality's factor F_m^r [0; 1]
    is a learned constant that does not depend on its encoding. Options: rank, rank_dim.
    """

    name = "low_rank"

    def __init__(self, dims, token_dims, dim=128, trunk=(256,), rank: int = 4, rank_dim: int = 8):
        rank, rank_dim = _int_option("rank", rank), _int_option("rank_dim", rank_dim)
        super().__init__(dims, token_dims, dim, trunk, project_dim=rank_dim)
        self.rank, self.rank_dim = rank, rank_dim
        self.factors = nn.ParameterDict()
        for i, m in enumerate(self.modalities):
            # each factor F_m^r z_m ~ unit scale so the M-fold product neither explodes nor vanishes; the
            # first modality's factors also carry 1 / sqrt(rank) so the sum over ranks stays unit scale
            std = 1 / math.sqrt(rank_dim + 1) / (math.sqrt(rank) if i == 0 else 1)
            self.factors[m] = nn.Parameter(torch.randn(rank, rank_dim + 1, self.dim) * std)
        self.bias = nn.Parameter(torch.zeros(self.dim))
        self.out_dim = self.dim

    def forward(self, encoded, mask):
        product = None
        for m in self.modalities:
            z = _with_one(self.projection(m, encoded, mask))
            f = torch.einsum("bi,rio->bro", z, self.factors[m].to(z.dtype))  # [B, rank, dim]
            product = f if product is None else product * f.to(product.dtype)
        return product.sum(1) + self.bias


# ------------------------------------------------------------------------------------------ EmbraceNet

class Embrace(Fusion):
    """EmbraceNet (Choi & Lee 2019, "EmbraceNet: A robust deep learning architecture for multimodal
    classification"):

        d_m = ReLU(W_m x_m + b_m)                           (docking layer, per modality)
        p_m = w_m [m present] / sum_n w_n [n present]       (w: `probabilities`, uniform by default)
        training: out_k = d_{r_k, k},  r_k ~ Categorical(p) independently per sample and feature k
        eval:     out = sum_m p_m d_m                        (the expectation: deterministic)

    Each feature comes from exactly one present modality, so the network learns features that survive
    any modality going missing (the paper's multimodal dropout). A sample with no modality gets zeros.
    Options: probabilities: null (uniform), or positive per-modality weights, a mapping
    {modality: weight} (entries for modalities the model does not get are ignored) or a list in the
    order of the modalities; renormalised over each sample's present modalities.
    """

    name = "embrace"

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
        out = []
        for m in self.modalities:
            present = mask[m].bool()
            out.append(_zero_missing(self.dock[m](_zero_missing(encoded[m].vector, present)), present))
        return torch.stack(out, 1)

    def selection(self, mask) -> torch.Tensor:
        """[B, M]: each sample's selection probabilities (0 for missing modalities; rows sum to 1 or 0)."""
        present = _present(mask, self.modalities)
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
