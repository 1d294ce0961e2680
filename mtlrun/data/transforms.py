"""`data.transforms`: torchvision.transforms.v2 pipelines applied to training batches, jointly to a sample's
images and its per-pixel targets.

    data:
      transforms:
        - {_target_: torchvision.transforms.v2.RandomHorizontalFlip, p: 0.5}
        - {_target_: torchvision.transforms.v2.RandomResizedCrop, size: [64, 64], scale: [0.5, 1.0]}
        - {_target_: torchvision.transforms.v2.ColorJitter, brightness: 0.2}

Every image input goes in as a `tv_tensors.Image`, every segmentation / depth / normals target as a
`tv_tensors.Mask`, so the geometric transforms move them alike (masks with nearest neighbour: no class id or
depth is blended) and the photometric ones touch only the images. torchvision draws one set of random
parameters per call, so the pipeline is called once per sample of the batch (on the batch's device): each
sample gets its own flip or crop. That is a loop over the batch; for flips and crops over large batches,
the table data's `data.augment` does the same vectorised.

Surface normals follow a horizontal flip: their x component is negated where a sample's image was mirrored
(detected by carrying an x-coordinate ramp through the pipeline). Rotations and other transforms that turn
the image do not rotate the normals' vectors: do not combine them with a normals target. Colour transforms
expect images in [0, 1] (torchvision clamps to it). A transform must keep the image's size (the model is
built for it): a crop gives `size` back.
A detection target's boxes go in as `tv_tensors.BoundingBoxes` (XYXY, the image's canvas), so flips, crops
and resizes move them with the image. Afterwards every box is clamped to the image and one narrower or lower
than MIN_BOX_SIDE pixel is dropped (becomes a padding row), as v2.SanitizeBoundingBoxes(min_size=1) would:
a box that left the crop is no longer an object of the sample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from mtlrun.errors import UsageError

PREFIX = "torchvision.transforms.v2."
MASK_KINDS = ("segmentation", "depth", "normals")
BOX_KINDS = ("detection",)
MIN_BOX_SIDE = 1.0  # pixels
_RAMP = "x ramp"  # the key of the coordinate ramp that shows whether a sample was flipped


def build_pipeline(nodes) -> Callable | None:
    """A v2.Compose of `nodes` (each `{_target_: torchvision.transforms.v2.NAME, options...}`), None for none."""
    if nodes is None or (isinstance(nodes, Sequence) and not isinstance(nodes, str) and not len(nodes)):
        return None
    if isinstance(nodes, (str, Mapping)) or not isinstance(nodes, Sequence):
        raise UsageError(f"data.transforms={nodes!r}: a list of {{_target_: {PREFIX}NAME, options}}, e.g. "
                         f"[{{_target_: {PREFIX}RandomHorizontalFlip, p: 0.5}}]")
    from torchvision.transforms import v2

    steps = []
    for i, node in enumerate(nodes):
        key = f"data.transforms[{i}]"
        node = dict(node) if isinstance(node, Mapping) else node
        target = node.get("_target_") if isinstance(node, dict) else None
        if not isinstance(target, str) or not target.startswith(PREFIX):
            raise UsageError(f"{key}={node!r}: each transform is {{_target_: {PREFIX}NAME, options}}; only "
                             f"torchvision.transforms.v2 transforms apply jointly to images and masks")
        name = target[len(PREFIX):]
        cls = getattr(v2, name, None)
        if not (isinstance(cls, type) and issubclass(cls, v2.Transform)):
            raise UsageError(f"{key}._target_={target}: torchvision.transforms.v2 has no transform {name!r}")
        options = {k: _plain(v) for k, v in node.items() if k != "_target_"}
        try:
            steps.append(cls(**options))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{key}: {name}({', '.join(f'{k}={v!r}' for k, v in options.items())}): {exc}") from exc
    return v2.Compose(steps)


def _plain(value):
    """OmegaConf lists / dicts as Python ones (torchvision checks for list / tuple)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


class JointTransform:
    """Calls `pipeline` per sample on the batch's `images` inputs and `masks` targets ({task: kind})."""

    def __init__(self, pipeline: Callable, images: Sequence[str], masks: Mapping[str, str],
                 boxes: Sequence[str] = ()):
        if not images:
            raise UsageError("data.transforms act on images (and their per-pixel targets); this run reads no "
                             "image input")
        self.pipeline, self.images, self.masks, self.boxes = pipeline, list(images), dict(masks), list(boxes)
        self.normals = [t for t, kind in self.masks.items() if kind == "normals"]

    def __call__(self, batch: dict) -> dict:
        from torchvision import tv_tensors

        inputs, targets = dict(batch["inputs"]), dict(batch["targets"])
        first = inputs[self.images[0]]
        ramp = None
        if self.normals:
            width = first.shape[-1]
            ramp = torch.linspace(0, 1, width, device=first.device).expand(1, first.shape[-2], width)
        outs = []
        for i in range(first.shape[0]):  # torchvision draws one parameter set per call
            sample = {("inputs", m): tv_tensors.Image(inputs[m][i]) for m in self.images}
            sample.update({("targets", t): tv_tensors.Mask(targets[t][i]) for t in self.masks})
            if ramp is not None:
                sample[_RAMP] = tv_tensors.Mask(ramp)
            for t in self.boxes:  # every row, padding too (a degenerate box): no data-dependent shape, no sync
                sample[("targets", t)] = tv_tensors.BoundingBoxes(
                    torch.nan_to_num(targets[t][i][:, :4].float()), format="XYXY", canvas_size=tuple(first.shape[-2:]))
            outs.append(self.pipeline(sample))
        for m in self.images:
            inputs[m] = torch.stack([o[("inputs", m)].as_subclass(torch.Tensor) for o in outs])
        for t in self.masks:
            targets[t] = torch.stack([o[("targets", t)].as_subclass(torch.Tensor) for o in outs])
        for t in self.boxes:
            targets[t] = _kept_boxes(targets[t], [o[("targets", t)] for o in outs])
        if ramp is not None:  # a sample whose ramp now falls left to right was mirrored: negate its normals' x
            ramps = torch.stack([o[_RAMP].as_subclass(torch.Tensor) for o in outs])  # [B, 1, H, W]
            mirrored = ramps[:, 0, :, 0].mean(1) > ramps[:, 0, :, -1].mean(1)
            sign = torch.where(mirrored, -1.0, 1.0).to(first.device)
            for t in self.normals:
                normals = targets[t].clone()
                normals[:, 0] *= sign.view(-1, 1, 1).to(normals.dtype)
                targets[t] = normals
        return {**batch, "inputs": inputs, "targets": targets}


def joint_transform(nodes, spec) -> JointTransform | None:
    """The `data.transforms` of a run reading `spec` (mtlrun.data.base.DataSpec), checked on a zero sample of
    the spec's shapes: a transform that changes an image's size is a UsageError before training starts."""
    pipeline = build_pipeline(nodes)
    if pipeline is None:
        return None
    images = [m for m, info in spec.modalities.items() if info.kind == "image"]
    masks = {t: info.kind for t, info in spec.targets.items() if info.kind in MASK_KINDS}
    boxes = [t for t, info in spec.targets.items() if info.kind in BOX_KINDS]
    transform = JointTransform(pipeline, images, masks, boxes)
    probe = {"inputs": {m: torch.zeros(1, *spec.modalities[m].shape) for m in images},
             "targets": {t: torch.zeros(1, *_target_shape(spec, t), dtype=torch.long if kind == "segmentation"
                                        else torch.float32) for t, kind in masks.items()}}
    probe["targets"].update({t: torch.full((1, spec.targets[t].dim or 1, 5), -1.0) for t in boxes})
    try:
        out = transform(probe)
    except Exception as exc:  # a transform that cannot take these tensors
        raise UsageError(f"data.transforms cannot be applied to this data's images and maps: {exc}") from exc
    for group, names in (("inputs", images), ("targets", masks)):
        for name in names:
            before, after = tuple(probe[group][name].shape[1:]), tuple(out[group][name].shape[1:])
            if before != after:
                raise UsageError(f"data.transforms turn {group} '{name}' of shape {list(before)} into "
                                 f"{list(after)}; the model is built for {list(before)}: give crops and resizes "
                                 f"that size (e.g. RandomResizedCrop with size: {list(before[-2:])})")
    return transform


def _kept_boxes(before: torch.Tensor, moved: list) -> torch.Tensor:
    """The batch's detection target [B, M, 5] with each sample's moved boxes, clamped to the image; a box
    thinner than MIN_BOX_SIDE after that (it left the crop) becomes padding (class -1)."""
    from torchvision.transforms.v2.functional import clamp_bounding_boxes

    boxes = torch.stack([clamp_bounding_boxes(b).as_subclass(torch.Tensor) for b in moved]).to(before.dtype)
    sides = boxes[..., 2:] - boxes[..., :2]
    kept = (before[..., 4] >= 0) & (sides >= MIN_BOX_SIDE).all(-1)
    return torch.cat([torch.where(kept.unsqueeze(-1), boxes, 0.0),
                      torch.where(kept, before[..., 4], -1.0).unsqueeze(-1)], dim=-1)


def _target_shape(spec, task: str) -> tuple[int, ...]:
    """A dense target's per-sample shape: [H, W] (segmentation) or [C, H, W], at the first image's size."""
    info = spec.targets[task]
    size = next(i.shape[-2:] for i in spec.modalities.values() if i.kind == "image")
    return tuple(size) if info.kind == "segmentation" else (info.dim or 1, *size)
