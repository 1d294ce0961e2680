"""`data.transforms`: torchvision.transforms.v2 pipelines on training batches, applied per sample and jointly to
images, segmentation masks, depth and normals (which follow a horizontal flip)."""

from __future__ import annotations

import pytest
import torch

from contracts import TINY, compose_config, read_results, run_cli
from mtlrun.build import build_components
from mtlrun.data.base import DataSpec, ModalityInfo, TargetInfo
from mtlrun.data.transforms import joint_transform
from mtlrun.errors import UsageError

V2 = "torchvision.transforms.v2."
H, W = 6, 8
SPEC = DataSpec({"image": ModalityInfo("image", (3, H, W)), "audio": ModalityInfo("audio", (5,))},
                {"seg": TargetInfo("segmentation", num_classes=W), "depth": TargetInfo("depth", dim=1),
                 "normals": TargetInfo("normals", dim=3), "label": TargetInfo("classification", num_classes=2)})


def coordinate_batch(batch: int = 32) -> dict:
    """Every map holds its pixel's column: image channel 0 (col / W), the mask (col), depth (col + 1); normals
    point right (+x); the audio and the label must come out untouched."""
    col = torch.arange(W).expand(batch, H, W)
    image = torch.stack([col / W, torch.rand(batch, H, W), torch.rand(batch, H, W)], 1)
    normals = torch.zeros(batch, 3, H, W)
    normals[:, 0] = 1.0
    return {"inputs": {"image": image, "audio": torch.randn(batch, 5)},
            "targets": {"seg": col.clone(), "depth": (col + 1).float().unsqueeze(1), "normals": normals,
                        "label": torch.randint(0, 2, (batch,))}}


def test_a_flip_moves_image_mask_depth_and_normals_together_per_sample():
    torch.manual_seed(0)
    transform = joint_transform([{"_target_": V2 + "RandomHorizontalFlip", "p": 0.5}], SPEC)
    batch = coordinate_batch()
    out = transform(batch)
    mirrored = out["targets"]["seg"][:, 0, 0] == W - 1  # column 0 now holds the last column
    assert 0 < mirrored.sum() < len(mirrored)  # one draw per sample, not one for the batch
    expected = torch.where(mirrored[:, None, None], W - 1 - torch.arange(W), torch.arange(W)).expand(-1, H, W)
    assert torch.equal(out["targets"]["seg"], expected)
    assert torch.equal(out["targets"]["depth"][:, 0], expected.float() + 1)
    torch.testing.assert_close(out["inputs"]["image"][:, 0], expected / W)
    assert torch.equal(out["inputs"]["image"][~mirrored], batch["inputs"]["image"][~mirrored])
    assert torch.equal(out["inputs"]["image"][mirrored], batch["inputs"]["image"][mirrored].flip(-1))
    normals_x = out["targets"]["normals"][:, 0]
    assert torch.equal(normals_x, torch.where(mirrored, -1.0, 1.0)[:, None, None].expand(-1, H, W))
    assert (out["targets"]["normals"][:, 1:] == 0).all()
    assert out["targets"]["seg"].dtype == torch.long and type(out["inputs"]["image"]) is torch.Tensor
    assert torch.equal(out["inputs"]["audio"], batch["inputs"]["audio"])
    assert torch.equal(out["targets"]["label"], batch["targets"]["label"])


def test_a_random_resized_crop_keeps_the_maps_aligned_and_the_size():
    torch.manual_seed(1)
    transform = joint_transform([{"_target_": V2 + "RandomResizedCrop", "size": [H, W], "scale": [0.3, 0.6]},
                                 {"_target_": V2 + "ColorJitter", "brightness": 0.5}], SPEC)
    out = transform(coordinate_batch(8))
    seg, depth = out["targets"]["seg"], out["targets"]["depth"]
    assert seg.shape == (8, H, W) and out["inputs"]["image"].shape == (8, 3, H, W)
    assert torch.equal(depth[:, 0], seg.float() + 1)  # both nearest: never a blended column
    assert (seg.amax((1, 2)) - seg.amin((1, 2)) < W - 1).any()  # cropped: fewer columns in view
    assert (out["targets"]["normals"][:, 0] == 1).all()  # a crop does not mirror


@pytest.mark.parametrize("nodes,message", [
    ([{"_target_": "torchvision.transforms.RandomHorizontalFlip"}], r"data\.transforms\[0\].*only torchvision"),
    ([{"_target_": "os.system", "command": "true"}], r"data\.transforms\[0\]"),
    ([{"_target_": V2 + "NoSuchFlip"}], r"has no transform 'NoSuchFlip'"),
    ([{"_target_": V2 + "RandomHorizontalFlip", "q": 1}], r"data\.transforms\[0\]: RandomHorizontalFlip\(q=1\)"),
    ({"_target_": V2 + "RandomHorizontalFlip"}, r"a list of"),
    ([{"_target_": V2 + "Resize", "size": [3, 4]}], r"turn inputs 'image' of shape \[3, 6, 8\] into \[3, 3, 4\]"),
])
def test_bad_transforms_are_usage_errors(nodes, message):
    with pytest.raises(UsageError, match=message):
        joint_transform(nodes, SPEC)


def test_transforms_need_an_image():
    audio_only = DataSpec({"audio": ModalityInfo("audio", (5,))}, {})
    with pytest.raises(UsageError, match="no image input"):
        joint_transform([{"_target_": V2 + "RandomHorizontalFlip"}], audio_only)
    assert joint_transform(None, audio_only) is None and joint_transform([], audio_only) is None


def test_the_data_module_applies_them_to_training_batches_from_the_config():
    flip = f"data.transforms=[{{_target_:{V2}RandomHorizontalFlip,p:1.0}}]"
    cfg = compose_config([*TINY, "data.n_train=8", "data.n_val=4", "data.n_test=4", flip])
    data = build_components(cfg).data
    batch = data.dataset("train").__getitems__(list(range(8)))
    out = data.train_transform()(batch)
    assert torch.equal(out["inputs"]["image"], batch["inputs"]["image"].flip(-1))
    with pytest.raises(UsageError, match=r"data\.transforms\[0\]"):
        build_components(compose_config([*TINY, "data.transforms=[{_target_:builtins.print}]"]))


def test_a_checkpoint_may_name_v2_transforms_under_data_transforms_and_nothing_else():
    from mtlrun.trust import check_checkpoint_config

    def config(target, key="transforms"):
        return {"data": {"_target_": "mtlrun.data.multidigits.MultiDigits", key: [{"_target_": target}]}}

    check_checkpoint_config(config(V2 + "RandomHorizontalFlip"), [], "checkpoint=x.pt")  # accepted
    for bad in (config("os.system"), config(V2 + "functional.hflip"), config(V2 + "RandomHorizontalFlip", "other")):
        with pytest.raises(UsageError, match="refused"):
            check_checkpoint_config(bad, [], "checkpoint=x.pt")


@pytest.mark.e2e
def test_a_tiny_run_trains_with_transforms(tmp_path):
    transforms = (f"data.transforms=[{{_target_:{V2}RandomResizedCrop,size:[16,16],scale:[0.7,1.0]}},"
                  f"{{_target_:{V2}ColorJitter,brightness:0.2}}]")
    proc = run_cli("train", *TINY, "data.n_train=128", transforms, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test/left/accuracy" in read_results(tmp_path)
