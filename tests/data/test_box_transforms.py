"""`data.transforms` move a detection target's boxes with the image (tv_tensors.BoundingBoxes); a box that
leaves a crop becomes padding, as v2.SanitizeBoundingBoxes would drop it."""

from __future__ import annotations

import torch

from mtlrun.data.base import DataSpec, ModalityInfo, TargetInfo
from mtlrun.data.transforms import joint_transform

V2 = "torchvision.transforms.v2."
H, W = 16, 20
SPEC = DataSpec({"image": ModalityInfo("image", (3, H, W))},
                {"det": TargetInfo("detection", num_classes=3, dim=2), "seg": TargetInfo("segmentation", num_classes=3)})


def batch_with_a_box(box, n=1):
    """An image whose pixels inside `box` are 1 (channel 0), its segmentation the same, and the box as target."""
    x1, y1, x2, y2 = box
    image = torch.zeros(n, 3, H, W)
    image[:, 0, y1:y2, x1:x2] = 1.0
    target = torch.tensor([[[*map(float, box), 2.0], [0, 0, 0, 0, -1]]]).repeat(n, 1, 1)
    return {"inputs": {"image": image}, "targets": {"det": target, "seg": image[:, 0].long()}}


def extent(mask):
    ys, xs = mask.nonzero(as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_a_flip_moves_the_box_with_the_image():
    transform = joint_transform([{"_target_": V2 + "RandomHorizontalFlip", "p": 1.0}], SPEC)
    out = transform(batch_with_a_box((2, 4, 9, 12)))
    det = out["targets"]["det"][0]
    assert det[0].tolist() == [W - 9, 4, W - 2, 12, 2]  # mirrored: x -> W - x
    assert extent(out["inputs"]["image"][0, 0] > 0.5) == det[0, :4].int().tolist()
    assert det[1, 4] == -1  # padding stays padding


def test_a_resized_crop_keeps_the_box_on_its_pixels_and_drops_boxes_that_leave():
    torch.manual_seed(0)
    transform = joint_transform([{"_target_": V2 + "RandomResizedCrop", "size": [H, W], "scale": [0.3, 0.6],
                                  "ratio": [1.25, 1.25]}], SPEC)
    out = transform(batch_with_a_box((4, 4, 16, 12), n=64))
    kept = dropped = 0
    for image, seg, det in zip(out["inputs"]["image"][:, 0], out["targets"]["seg"], out["targets"]["det"]):
        if det[0, 4] < 0:  # the crop missed the box (less than a pixel of it left): no object any more
            assert (seg > 0).sum() <= 2 * max(H, W) and det[0, :4].tolist() == [0, 0, 0, 0]
            dropped += 1
            continue
        x1, y1, x2, y2 = det[0, :4].tolist()
        assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H  # clamped to the image
        inside = (seg > 0).nonzero(as_tuple=True)
        # the object's resampled pixels lie in the moved box (to a pixel: nearest-neighbour resampling)
        assert inside[1].min() >= x1 - 1 and inside[1].max() + 1 <= x2 + 1
        assert inside[0].min() >= y1 - 1 and inside[0].max() + 1 <= y2 + 1
        kept += 1
    assert kept > 10
