"""Task heads: map the shared representation to one task's prediction.

`make_heads` is the one place that picks a head per task, from whether the encoder outputs a feature map
(`encoder.dense`, the encoder-decoders of mtlrun.models.backbone.dense) and whether the task predicts one
(`task.dense`: segmentation, depth, normals):

    vector encoder, vector task  ->  make_head: [B, D] -> [B, output_dim]
    dense encoder,  dense task   ->  make_dense_head: [B, C, H, W] -> [B, output_dim, H, W]
    dense encoder,  vector task  ->  global average pooling, then make_head
    vector encoder, dense task   ->  a UsageError at build time
    dense encoder,  spatial task ->  make_detection_head: [B, C, H, W] -> [B, output_dim, H / s, W / s]
    (`task.spatial`: detection, whose head reads a grid of stride s; a vector encoder: a UsageError)

Token-level tasks (`task.token_level`: mtlrun.tasks.Tagging) read a text encoder's token sequence
(`encoder.tokens(ids) -> (tokens [B, L, D], mask [B, L])`) instead: `make_token_heads` gives every task a
head called as `head(tokens, mask)`; a token-level task gets `make_head` on each token (with `crf: true`, the
CRF's potentials from it: CRFHead), a sentence-level one the masked mean of the tokens, then `make_head`. Only arch=hps builds them (its shared representation
is then the token sequence); `make_heads` refuses token-level tasks for the other architectures.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mtlrun.crf import chain_potentials
from mtlrun.errors import UsageError
from mtlrun.models.backbone.base import masked_mean


def make_head(in_dim: int, out_dim: int, hidden: int = 0, dropout: float = 0.0) -> nn.Module:
    """A linear head, or a one-hidden-layer MLP head when `hidden > 0`."""
    if hidden <= 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, out_dim))


def make_dense_head(in_channels: int, out_channels: int, hidden: int = 0, dropout: float = 0.0) -> nn.Module:
    """Per-pixel head: 3x3 conv-BN-ReLU of width `hidden` (`in_channels` when 0), channel dropout, then a
    1x1 conv to `out_channels`. The resolution is kept: the prediction is at the feature map's size."""
    width = hidden if hidden > 0 else in_channels
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(inplace=True), nn.Dropout2d(dropout), nn.Conv2d(width, out_channels, 1))


def make_pooled_head(in_channels: int, out_dim: int, hidden: int = 0, dropout: float = 0.0) -> nn.Module:
    """A vector task on a feature map: global average pooling, then `make_head`."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), make_head(in_channels, out_dim, hidden, dropout))


def make_detection_head(in_channels: int, num_classes: int, stride: int, hidden: int = 0,
                        dropout: float = 0.0) -> nn.Module:
    """FCOS's head on one level (mtlrun.detection): average-pool the full-resolution shared map by `stride`,
    two 3x3 conv-BN-ReLU of width `hidden` (`in_channels` when 0), then a 1x1 conv to the class logits,
    4 log distances and the centre-ness logit. The class bias starts at the prior 0.01 (FCOS, RetinaNet) so
    the many background locations do not swamp the focal loss at the first steps."""
    width = hidden if hidden > 0 else in_channels
    out = nn.Conv2d(width, num_classes + 5, 1)
    nn.init.normal_(out.weight, std=0.01)
    nn.init.zeros_(out.bias)
    nn.init.constant_(out.bias[:num_classes], -math.log((1 - 0.01) / 0.01))
    pool = [nn.AvgPool2d(stride)] if stride > 1 else []
    return nn.Sequential(*pool, nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, padding=1, bias=False),
                         nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.Dropout2d(dropout), out)


def make_heads(tasks: dict, encoder: nn.Module, hidden: int = 0, dropout: float = 0.0,
               arch: str = "") -> nn.ModuleDict:
    """One head per task on `encoder`'s output (`encoder.out_dim` features or channels); see the module doc.
    `arch` names the sharing architecture in the error for a task that needs a map the encoder lacks."""
    dense_encoder = bool(getattr(encoder, "dense", False))
    token_level = [name for name, task in tasks.items() if getattr(task, "token_level", False)]
    if token_level:
        raise UsageError(f"tasks.{token_level[0]}: a token-level task (one tag per token) needs arch=hps, whose "
                         f"shared representation is then the text encoder's token sequence; this architecture "
                         f"shares one vector per sample")
    heads = {}
    for name, task in tasks.items():
        dense_task = bool(getattr(task, "dense", False))
        if getattr(task, "spatial", False):
            if not dense_encoder:
                raise UsageError(
                    f"tasks.{name}: a {task.kind} task reads a feature map, but with arch={arch or '?'} the "
                    f"shared representation is {type(encoder).__name__}'s one vector per sample; use an "
                    f"encoder-decoder image backbone (backbone/image=segnet or resnet_dense) with arch=hps, "
                    f"mtan, cross_stitch, mmoe or ple, and data.modalities=[image]")
            heads[name] = make_detection_head(encoder.out_dim, task.num_classes, task.stride, hidden, dropout)
            continue
        if dense_task and not dense_encoder:
            raise UsageError(
                f"tasks.{name}: a dense task (a [B, {task.output_dim}, H, W] map per image) needs a backbone "
                f"that outputs a feature map, but {type(encoder).__name__} outputs one vector per sample; use "
                f"an encoder-decoder on the image input: backbone/image=segnet (small, for CPU) or "
                f"backbone/image=resnet_dense; with several input modalities, fusion=late (one dense model per "
                f"modality, predictions averaged per pixel) or data.modalities=[image]")
        if dense_task:
            heads[name] = make_dense_head(encoder.out_dim, task.output_dim, hidden, dropout)
        elif dense_encoder:
            heads[name] = make_pooled_head(encoder.out_dim, task.output_dim, hidden, dropout)
        else:
            heads[name] = make_head(encoder.out_dim, task.output_dim, hidden, dropout)
    return nn.ModuleDict(heads)


class TokenHead(nn.Module):
    """A token-level task's head: `make_head` on every token, [B, L, D] -> [B, L, output_dim]."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(tokens)  # padding positions get a prediction too; their targets are ignored


class CRFHead(TokenHead):
    """A token-level task with a linear-chain CRF (`Tagging(crf=true)`): emissions from `make_head`, plus the
    transition, start and end scores; predicts the chain's potentials [B, L, C, C] (mtlrun.crf)."""

    def __init__(self, head: nn.Module, num_tags: int):
        super().__init__(head)
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return chain_potentials(self.head(tokens), self.transitions, self.start, self.end, mask)


class PooledTokenHead(TokenHead):
    """A sentence-level task on a token sequence: the mean over the real tokens, then `make_head`."""

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(masked_mean(tokens, mask))


def make_token_heads(tasks: dict, encoder: nn.Module, hidden: int = 0, dropout: float = 0.0) -> nn.ModuleDict:
    """One head per task on `encoder.tokens(...)`, each called as `head(tokens, mask)`; see the module doc."""
    if not callable(getattr(encoder, "tokens", None)):
        tagging = next(name for name, task in tasks.items() if getattr(task, "token_level", False))
        raise UsageError(f"tasks.{tagging}: a token-level task needs a text encoder that outputs one vector per "
                         f"token (backbone/text=gru, lstm, transformer or hf, with the text as the only input: "
                         f"data.modalities=[<text input>]); {type(encoder).__name__} has no `tokens`")
    dense = [name for name, task in tasks.items() if getattr(task, "dense", False)]
    if dense:
        raise UsageError(f"tasks.{dense[0]}: a dense (per-pixel) task cannot share a text encoder with token-level "
                         f"tasks")
    heads = {}
    for name, task in tasks.items():
        head = make_head(encoder.token_dim, task.output_dim, hidden, dropout)
        if not getattr(task, "token_level", False):
            heads[name] = PooledTokenHead(head)
        else:
            heads[name] = CRFHead(head, task.output_dim) if getattr(task, "crf", False) else TokenHead(head)
    return nn.ModuleDict(heads)
