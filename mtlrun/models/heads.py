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
"""

from __future__ import annotations

import math

from torch import nn

from mtlrun.errors import UsageError


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
