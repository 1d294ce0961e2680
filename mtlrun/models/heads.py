"""Task heads: map the shared representation to one task's prediction.

`make_heads` is the one place that picks a head per task, from whether the encoder outputs a feature map
(`encoder.dense`, the encoder-decoders of mtlrun.models.backbone.dense) and whether the task predicts one
(`task.dense`: segmentation, depth, normals):

    vector encoder, vector task  ->  make_head: [B, D] -> [B, output_dim]
    dense encoder,  dense task   ->  make_dense_head: [B, C, H, W] -> [B, output_dim, H, W]
    dense encoder,  vector task  ->  global average pooling, then make_head
    vector encoder, dense task   ->  a UsageError at build time
"""

from __future__ import annotations

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


def make_heads(tasks: dict, encoder: nn.Module, hidden: int = 0, dropout: float = 0.0) -> nn.ModuleDict:
    """One head per task on `encoder`'s output (`encoder.out_dim` features or channels); see the module doc."""
    dense_encoder = bool(getattr(encoder, "dense", False))
    heads = {}
    for name, task in tasks.items():
        dense_task = bool(getattr(task, "dense", False))
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
