"""`data.augment`: train-time flips and random resized crops, drawn once per sample for all its images and maps."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mtlrun.checks import is_real
from mtlrun.data.table.fields.base import plain


@dataclass(frozen=True)
class Augment:
    """Train-time augmentation drawn once per sample and applied alike to all its images, masks and depth maps.

    `hflip`: horizontal flip with probability 1/2. `crop_scale` [lo, hi]: a random resized crop keeping a
    fraction lo..hi of the area, aspect ratio 3/4..4/3, resized back. Both act on the normalised coordinates
    of every tensor, so inputs and dense targets of different resolutions stay aligned; images are
    resampled bilinearly, masks and depth by nearest neighbour (no class id or depth is ever blended).
    Draws come from torch's global RNG, in this order: flips [B], then scale, ratio, top, left [B] each.
    """

    hflip: bool = False
    crop_scale: tuple[float, float] | None = None

    def __bool__(self) -> bool:
        return self.hflip or self.crop_scale is not None

    def theta(self, b: int) -> torch.Tensor:
        """[B, 2, 3] affine maps from output to input normalised coordinates."""
        sx, sy, tx, ty = torch.ones(b), torch.ones(b), torch.zeros(b), torch.zeros(b)
        flip = torch.rand(b) < 0.5 if self.hflip else torch.zeros(b, dtype=torch.bool)
        if self.crop_scale is not None:
            lo, hi = self.crop_scale
            area = lo + (hi - lo) * torch.rand(b)
            ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * torch.rand(b))
            sx = torch.sqrt(area * ratio).clamp(max=1.0)  # the crop's width and height, as fractions
            sy = torch.sqrt(area / ratio).clamp(max=1.0)
            top, left = torch.rand(b) * (1 - sy), torch.rand(b) * (1 - sx)
            tx, ty = -1 + 2 * left + sx, -1 + 2 * top + sy
        sx = torch.where(flip, -sx, sx)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
        return theta

    @staticmethod
    def apply(x: torch.Tensor, theta: torch.Tensor, nearest: bool) -> torch.Tensor:
        """x [B, C, H, W] (or [B, H, W] for masks) resampled through theta, same size and dtype."""
        squeeze = x.dim() == 3
        src = (x.unsqueeze(1) if squeeze else x).to(torch.float32)
        grid = F.affine_grid(theta, list(src.shape), align_corners=False)
        out = F.grid_sample(src, grid, mode="nearest" if nearest else "bilinear", padding_mode="border",
                            align_corners=False)
        out = out.squeeze(1) if squeeze else out
        return out.round().to(x.dtype) if not x.is_floating_point() else out


def parse_augment(node, problems: list[str]) -> Augment:
    node = plain(node) or {}
    if not isinstance(node, dict) or set(node) - {"hflip", "crop_scale"}:
        problems.append(f"data.augment={node!r}: valid keys: hflip (true/false), crop_scale (null or [lo, hi])")
        return Augment()
    hflip, scale = node.get("hflip", False), node.get("crop_scale")
    if not isinstance(hflip, bool):
        problems.append(f"data.augment.hflip={hflip!r}: must be true or false")
        hflip = False
    if scale is not None:
        if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and all(is_real(s) for s in scale)
                and 0 < scale[0] <= scale[1] <= 1):
            problems.append(f"data.augment.crop_scale={scale!r}: must be null or [lo, hi] with 0 < lo <= hi <= 1 "
                            f"(the fraction of the area a random crop keeps)")
            scale = None
        else:
            scale = (float(scale[0]), float(scale[1]))
    return Augment(hflip, scale)
