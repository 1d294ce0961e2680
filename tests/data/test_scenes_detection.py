"""data=scenes' `detection` target: the box of every object from the pixels where it is seen."""

from __future__ import annotations

import numpy as np
import torch

from mtlrun.data.scene_render import SHAPE_CLASS, render, sample_scenes, visible_boxes
from mtlrun.data.scenes import DETECTION_CLASSES, Scenes


def test_boxes_are_the_extent_of_each_objects_visible_pixels_with_its_class():
    scenes = sample_scenes(24, np.random.default_rng(0), 2, 5)
    out = render(scenes, 32, 40)
    target = visible_boxes(out["instances"], scenes.kind, min_area=1)
    assert target.shape == (24, 5, 5)
    checked = 0
    for n in range(24):
        for j in range(5):
            seen = out["instances"][n] == j
            x1, y1, x2, y2, cls = target[n, j].tolist()
            if not seen.any():
                assert cls == -1  # an empty slot, or an object hidden behind others or out of view
                continue
            ys, xs = seen.nonzero(as_tuple=True)
            assert [x1, y1, x2, y2] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert cls == scenes.kind[n, j]
            assert (out["segmentation"][n][seen] == SHAPE_CLASS + cls).all()  # the segmentation agrees
            checked += 1
    assert checked > 40


def test_occlusion_shrinks_a_box_and_small_objects_are_dropped():
    instances = torch.full((1, 8, 8), -1)
    instances[0, 1:7, 1:7] = 0  # object 0, partly hidden by object 1 in front of its right half
    instances[0, 1:7, 4:8] = 1
    instances[0, 0, 0] = 2  # object 2: one visible pixel
    kind = torch.tensor([[0, 1, 2]])
    target = visible_boxes(instances, kind, min_area=2)
    assert target[0, 0].tolist() == [1, 1, 4, 7, 0]
    assert target[0, 1].tolist() == [4, 1, 8, 7, 1]
    assert target[0, 2].tolist() == [0, 0, 0, 0, -1]  # below min_area: padding


def test_the_data_module_offers_the_detection_target():
    data = Scenes(n_train=4, n_val=2, n_test=2, image_size=24, max_shapes=4, min_box_area=4)
    info = data.full_spec.targets["detection"]
    assert (info.kind, info.num_classes, info.dim) == ("detection", 3, 4)
    assert data.class_names("detection") == list(DETECTION_CLASSES) == ["sphere", "box", "cylinder"]
    batch = data.build()["train"].__getitems__([0, 1])
    assert batch["targets"]["detection"].shape == (2, 4, 5) and batch["targets"]["detection"].dtype == torch.float32
