"""Small helpers the sharing architectures have in common."""

from __future__ import annotations

import torch
from torch import nn

from mtlrun.errors import UsageError
from mtlrun.checks import check_range  # noqa: F401 (re-exported for the archs)
from mtlrun.models.heads import make_heads  # noqa: F401 (re-exported for the archs)

_STAGE_API = ("stages", "stage_channels", "in_channels", "project", "out_dim")


def staged(encoder: nn.Module, arch: str, min_stages: int = 1) -> nn.Module:
    """`encoder`, checked to offer the stage API (mtlrun.models.backbone.base.StagedEncoder)."""
    missing = [a for a in _STAGE_API if not hasattr(encoder, a)]
    if missing:
        raise UsageError(f"arch={arch} works stage by stage, but the backbone {type(encoder).__name__} has no "
                         f"{', '.join(missing)}; give it the stage API of "
                         f"mtlrun.models.backbone.base.StagedEncoder, or use arch=hps / arch=soft")
    if len(encoder.stages) < min_stages:
        raise UsageError(f"arch={arch} needs a backbone with at least {min_stages} stages; "
                         f"{type(encoder).__name__} has {len(encoder.stages)} (backbone.image.channels for the cnn)")
    return encoder


def pool(x: torch.Tensor) -> torch.Tensor:
    """Global average over the spatial dimensions: [B, C, ...] -> [B, C] (a [B, D] vector is kept)."""
    return x.flatten(2).mean(-1) if x.dim() > 2 else x


def mix(weights: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    """sum_e weights[b, e] * stacked[b, e, ...]: a gate's convex combination of expert outputs."""
    shape = (*weights.shape, *([1] * (stacked.dim() - 2)))
    return (weights.to(stacked.dtype).view(shape) * stacked).sum(1)


class Gate(nn.Module):
    """softmax(W pool(x) + b) over `num_experts` (Ma et al. 2018 gate on globally pooled features)."""

    def __init__(self, in_channels: int, num_experts: int):
        super().__init__()
        self.linear = nn.Linear(in_channels, num_experts)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(pooled).float(), dim=-1)


def tap(x: torch.Tensor) -> torch.Tensor:
    """An alias of `x` for the task-specific modules to read, while the shared modules read `x` itself.

    The shared representation must be a cut of the graph: no element may feed another, or a gradient
    taken with respect to it (torch.autograd.grad(task_loss, shared)) would count the paths through the
    later element twice. Where shared modules go on computing from a tensor the tasks also read (MTAN's
    stage outputs, PLE's lower-level experts), the tasks read and the model returns this alias instead.
    A view: no copy.
    """
    return x.view_as(x)


def check_gate_input(modality: str | None, shared_stages: int, arch: str) -> None:
    """Gates read the pooled bottom features, or the raw input with no shared bottom: with several
    modalities there is no single raw input to pool, only the fused features of stage 0."""
    if modality is None and shared_stages == 0:
        raise UsageError(f"arch={arch} with arch.shared_stages=0 gates on the raw input, but the data has several "
                         f"modalities (no single input to gate on); use arch.shared_stages >= 1 so the gates "
                         f"read the fused features")


def check_raw_gate_input(x, arch: str) -> None:
    """With no shared bottom the gates pool the raw input, which only means something for a feature map
    [B, C, H, W]: an image. A waveform or token ids would be pooled into nonsense, so refuse them."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise UsageError(f"arch={arch} with arch.shared_stages=0 gates on the raw input, which must be an image "
                         f"[B, C, H, W]; this input is {shape}. Use arch.shared_stages >= 1 so the gates read "
                         f"encoder features")
