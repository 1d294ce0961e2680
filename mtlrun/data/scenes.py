"""`scenes`: procedurally rendered 3-D scenes with per-pixel labels (no download; a pure function of the seed).

Each image is a ray-cast view of a room (mtlrun.data.scene_render says how): a checkerboard floor, a striped
back wall and `min_shapes`..`max_shapes` spheres, boxes and cylinders standing on the floor, at different
distances, Lambert-shaded from a random light, with Gaussian pixel noise (`noise`) added. Colours do not
depend on the object kind, so the class has to be read from the shape. Depth and normals are in the camera
frame: x right, y down, z forward (the viewing direction), in metres.

Inputs:
- `image`: float [3, H, W] in [0, 1] (an 8-bit rendering, stored as uint8);
- `depth` (only with `depth_sensor=true`): float [1, H, W], a simulated depth camera for RGB-D fusion:
  the true depth plus Gaussian noise of std `depth_noise` * depth^2 (metres), with 0 (no reading) beyond
  scene_render.SENSOR_RANGE metres, at a random `depth_dropout` fraction of the pixels and at half of the
  pixels on depth edges (> scene_render.EDGE_JUMP metres to a neighbour), as a structured-light sensor
  loses them.
Targets (every pixel is labelled in this dataset):
- `segmentation`: long [H, W], the class of the visible surface: CLASSES (0 floor, 1 wall, 2 sphere,
  3 box, 4 cylinder);
- `depth`: float [1, H, W], the z coordinate of the visible point in the camera frame (metres, > 0);
- `normals`: float [3, H, W], the unit surface normal of the visible point in the camera frame, pointing
  towards the camera (analytic for every surface);
- `detection`: float [max_shapes, 5], the 2-D box of every object from the pixels where it is seen (so an
  occluded part does not count), rows (x1, y1, x2, y2, class) with class 0 sphere, 1 box, 2 cylinder
  (DETECTION_CLASSES) and -1 for padding (mtlrun.detection's layout); an object seen at fewer than
  `min_box_area` pixels (default 16, a 4 x 4 patch) is left out: too little of it shows to be found.

Train, val and test are drawn from different random streams of the same seed. Rendering is vectorised
over the pixels and scenes of a chunk (a loop over the few object slots only): the defaults (3,000 scenes
of 64x64) take a few seconds and about 250 MB in memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mtlrun.checks import is_int, is_real
from mtlrun.data.base import DataModule, DataSpec, ModalityInfo, TargetInfo
from mtlrun.data.scene_render import CLASSES, depth_sensor, render, sample_scenes, visible_boxes
from mtlrun.data.scene_render import SHAPES, SceneParams, camera_rays  # noqa: F401 (importable here as before)
from mtlrun.errors import ConfigError

DETECTION_CLASSES = SHAPES
CHUNK = 256  # scenes rendered at once; fixed, so the data never depends on it


class DenseDataset(Dataset):
    """In-memory tensors in compact storage types, decoded per batch into the batch-dict layout.

    uint8 inputs are 8-bit images (-> float32 / 255); integer targets become long, float16 tensors
    float32. `__getitems__` gathers a whole batch with one index_select per tensor.
    """

    def __init__(self, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]):
        self.inputs, self.targets = inputs, targets
        lengths = {len(t) for t in [*inputs.values(), *targets.values()]}
        if len(lengths) != 1:
            raise ValueError(f"all tensors must have the same length, got lengths {sorted(lengths)}")
        self._len = lengths.pop()

    def __len__(self) -> int:
        return self._len

    @staticmethod
    def decode_input(x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    @staticmethod
    def decode_target(x: torch.Tensor) -> torch.Tensor:
        return x.float() if x.is_floating_point() else x.long()

    def __getitems__(self, indices: Sequence[int]) -> dict:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"inputs": {m: self.decode_input(t.index_select(0, idx)) for m, t in self.inputs.items()},
                "targets": {name: self.decode_target(t.index_select(0, idx)) for name, t in self.targets.items()}}

    def __getitem__(self, index: int) -> dict:
        batch = self.__getitems__([index])
        return {k: {name: t[0] for name, t in group.items()} for k, group in batch.items()}

    def select_modalities(self, keep: Sequence[str]) -> DenseDataset:
        unknown = [m for m in keep if m not in self.inputs]
        if unknown:
            raise ValueError(f"no modality {unknown}; this dataset has {list(self.inputs)}")
        return DenseDataset({m: self.inputs[m] for m in keep}, self.targets)


def image_size_pair(value, key: str, problems: list[str]) -> tuple[int, int] | None:
    """`data.image_size`: an int (square) or [H, W]; appends a problem and returns None when invalid."""
    if is_int(value):
        items = [value, value]
    else:
        try:
            items = list(value)
        except TypeError:
            items = []
    if len(items) != 2 or not all(is_int(v) and v >= 8 for v in items):
        problems.append(f"{key}={value}: must be an integer >= 8 (a square image) or a list [height, width] of "
                        f"two such integers")
        return None
    return items[0], items[1]


class Scenes(DataModule):
    name = "scenes"

    def __init__(self, n_train: int = 2000, n_val: int = 500, n_test: int = 500, image_size=64,
                 min_shapes: int = 2, max_shapes: int = 5, noise: float = 0.02, depth_sensor: bool = False,
                 depth_noise: float = 0.002, depth_dropout: float = 0.05, min_box_area: int = 16, seed: int = 0,
                 **loader):
        super().__init__(**loader)
        problems: list[str] = []

        for key, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if not is_int(value) or value < 1:
                problems.append(f"data.{key}={value}: must be an integer >= 1 (scenes in that split)")
        size = image_size_pair(image_size, "data.image_size", problems)
        if not is_int(min_shapes) or not is_int(max_shapes) or not 0 <= min_shapes <= max_shapes:
            problems.append(f"data.min_shapes={min_shapes}, data.max_shapes={max_shapes}: need integers with "
                            f"0 <= min_shapes <= max_shapes (objects per scene)")
        elif max_shapes > 12:
            problems.append(f"data.max_shapes={max_shapes}: at most 12 (the room gets crowded, rendering slow)")
        for key, value in (("noise", noise), ("depth_noise", depth_noise)):
            if not is_real(value) or value < 0:
                problems.append(f"data.{key}={value}: must be a number >= 0")
        if not is_real(depth_dropout) or not 0 <= depth_dropout < 1:
            problems.append(f"data.depth_dropout={depth_dropout}: must be a number in [0, 1) (the fraction of "
                            f"depth-sensor pixels without a reading)")
        if not isinstance(depth_sensor, bool):
            problems.append(f"data.depth_sensor={depth_sensor}: must be true or false")
        if not is_int(min_box_area) or min_box_area < 1:
            problems.append(f"data.min_box_area={min_box_area}: must be an integer >= 1 (visible pixels an object "
                            f"needs to get a detection box)")
        if not is_int(seed):
            problems.append(f"data.seed={seed}: must be an integer")
        if problems:
            raise ConfigError(problems)
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.image_size = size
        self.min_shapes, self.max_shapes = min_shapes, max_shapes
        self.noise, self.depth_sensor = float(noise), depth_sensor
        self.depth_noise, self.depth_dropout = float(depth_noise), float(depth_dropout)
        self.min_box_area = min_box_area
        self.seed = seed

    @property
    def full_spec(self) -> DataSpec:
        h, w = self.image_size
        modalities = {"image": ModalityInfo("image", (3, h, w), {"in_channels": 3, "input_size": (h, w)})}
        if self.depth_sensor:
            modalities["depth"] = ModalityInfo("image", (1, h, w), {"in_channels": 1, "input_size": (h, w)})
        return DataSpec(modalities=modalities,
                        targets={"segmentation": TargetInfo("segmentation", num_classes=len(CLASSES)),
                                 "depth": TargetInfo("depth", dim=1), "normals": TargetInfo("normals", dim=3),
                                 "detection": TargetInfo("detection", num_classes=len(DETECTION_CLASSES),
                                                         dim=self.max_shapes, labels=DETECTION_CLASSES)})

    def class_names(self, task: str) -> list | None:
        return list(DETECTION_CLASSES) if task == "detection" else None

    def render_split(self, split: str) -> DenseDataset:
        h, w = self.image_size
        index = ("train", "val", "test").index(split)
        n = self.sizes[split]
        scenes = sample_scenes(n, np.random.default_rng([self.seed, 104_729, index]), self.min_shapes,
                               self.max_shapes)
        noise_rng = np.random.default_rng([self.seed, 7_561, index])
        out = {"image": torch.empty(n, 3, h, w, dtype=torch.uint8),
               "segmentation": torch.empty(n, h, w, dtype=torch.int8),
               "depth": torch.empty(n, 1, h, w), "normals": torch.empty(n, 3, h, w),
               "detection": torch.empty(n, self.max_shapes, 5)}
        if self.depth_sensor:
            out["sensor"] = torch.empty(n, 1, h, w)
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            chunk = render(scenes.slice(start, stop), h, w)
            image = chunk["image"]
            if self.noise:
                image = image + self.noise * torch.from_numpy(noise_rng.standard_normal(image.shape, dtype=np.float32))
            out["image"][start:stop] = image.clamp(0, 1).mul(255).round().to(torch.uint8)
            out["segmentation"][start:stop] = chunk["segmentation"].to(torch.int8)
            out["depth"][start:stop] = chunk["depth"]
            out["normals"][start:stop] = chunk["normals"]
            out["detection"][start:stop] = visible_boxes(chunk["instances"], scenes.kind[start:stop],
                                                         self.min_box_area)
            if self.depth_sensor:
                out["sensor"][start:stop] = depth_sensor(chunk["depth"], noise_rng, self.depth_noise,
                                                         self.depth_dropout)
        inputs = {"image": out["image"]}
        if self.depth_sensor:
            inputs["depth"] = out["sensor"]
        return DenseDataset(inputs, {t: out[t] for t in ("segmentation", "depth", "normals", "detection")})

    def build(self) -> dict[str, DenseDataset]:
        return {split: self.render_split(split) for split in ("train", "val", "test")}
