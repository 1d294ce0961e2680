"""The dense datasets: `scenes` (rendered, checked against analytic geometry) and `nyuv2` (on a tiny fake
copy in the real MTAN / LibMTL layout)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contracts import read_results, run_cli
from mtlrun.data.nyuv2 import LIBMTL_URL, MTAN_URL, NYUv2, random_scale_crop_flip
from mtlrun.data.scenes import CLASSES, SHAPES, SceneParams, Scenes, camera_rays, render
from mtlrun.errors import ConfigError, UsageError

SPHERE, BOX, CYLINDER = (SHAPES.index(s) for s in ("sphere", "box", "cylinder"))
SPHERE_CLASS, BOX_CLASS, CYLINDER_CLASS = (CLASSES.index(s) for s in ("sphere", "box", "cylinder"))


def whole(dataset):
    return dataset.__getitems__(list(range(len(dataset))))


@pytest.fixture(scope="module")
def small_scenes():
    return Scenes(n_train=48, n_val=8, n_test=8, image_size=24, seed=0)


# ------------------------------------------------------------------------------------------- scenes


def test_scenes_spec_and_batch_layout(small_scenes):
    spec = small_scenes.spec
    assert list(spec.modalities) == ["image"]
    assert spec.modalities["image"].shape == (3, 24, 24)
    assert spec.modalities["image"].args == {"in_channels": 3, "input_size": (24, 24)}
    assert spec.targets["segmentation"].kind == "segmentation"
    assert spec.targets["segmentation"].num_classes == len(CLASSES) == 5
    assert (spec.targets["depth"].kind, spec.targets["depth"].dim) == ("depth", 1)
    assert (spec.targets["normals"].kind, spec.targets["normals"].dim) == ("normals", 3)
    batch = whole(small_scenes.dataset("train"))
    assert batch["inputs"]["image"].dtype == torch.float32 and batch["inputs"]["image"].shape == (48, 3, 24, 24)
    assert batch["targets"]["segmentation"].dtype == torch.long
    assert batch["targets"]["segmentation"].shape == (48, 24, 24)
    assert batch["targets"]["depth"].shape == (48, 1, 24, 24)
    assert batch["targets"]["normals"].shape == (48, 3, 24, 24)
    assert len(small_scenes.dataset("val")) == 8 and len(small_scenes.dataset("test")) == 8
    single = small_scenes.dataset("val")[3]
    assert single["targets"]["depth"].shape == (1, 24, 24)


def test_scenes_values_are_in_range(small_scenes):
    batch = whole(small_scenes.dataset("train"))
    image, seg = batch["inputs"]["image"], batch["targets"]["segmentation"]
    depth, normals = batch["targets"]["depth"], batch["targets"]["normals"]
    assert image.min() >= 0 and image.max() <= 1 and image.std() > 0.05
    assert seg.min() >= 0 and seg.max() < len(CLASSES)
    assert set(seg.unique().tolist()) == set(range(len(CLASSES)))  # every class appears somewhere
    assert torch.isfinite(depth).all() and depth.min() > 0 and depth.max() < 30
    assert torch.allclose(normals.norm(dim=1), torch.ones(1), atol=1e-5)
    # visible surfaces face the camera: the normal points against the viewing ray
    rays = camera_rays(24, 24).T.reshape(1, 3, 24, 24)
    assert ((normals * rays).sum(1) < 1e-6).all()
    # the floor reaches nearer to the camera than the wall does
    assert depth[:, 0][seg == 0].min() < depth[:, 0][seg == 1].min()


def test_scenes_are_deterministic_given_the_seed_and_differ_across_seeds_and_splits():
    a = whole(Scenes(n_train=6, n_val=3, n_test=3, image_size=16, seed=5, depth_sensor=True).dataset("train"))
    b = whole(Scenes(n_train=6, n_val=3, n_test=3, image_size=16, seed=5, depth_sensor=True).dataset("train"))
    for group in ("inputs", "targets"):
        for name in a[group]:
            assert torch.equal(a[group][name], b[group][name]), name
    c = whole(Scenes(n_train=6, n_val=3, n_test=3, image_size=16, seed=6, depth_sensor=True).dataset("train"))
    assert not torch.equal(a["inputs"]["image"], c["inputs"]["image"])
    assert not torch.equal(a["targets"]["depth"], c["targets"]["depth"])
    data = Scenes(n_train=3, n_val=3, n_test=3, image_size=16, seed=5)
    assert not torch.equal(whole(data.dataset("val"))["inputs"]["image"],
                           whole(data.dataset("test"))["inputs"]["image"])


def _scene(objects, pitch=0.0, height=1.5, wall=20.0):
    """One scene from (kind, centre, size, yaw) tuples; colours fixed."""
    k = len(objects)
    return SceneParams(
        camera_height=torch.tensor([height]), pitch=torch.tensor([pitch]), wall_distance=torch.tensor([wall]),
        light=F.normalize(torch.tensor([[0.3, -1.0, -0.5]]), dim=1),
        floor_colors=torch.tensor([[[0.5, 0.5, 0.5], [0.3, 0.3, 0.3]]]), wall_color=torch.tensor([[0.7, 0.7, 0.6]]),
        kind=torch.tensor([[o[0] for o in objects]]), center=torch.tensor([[o[1] for o in objects]]),
        size=torch.tensor([[o[2] for o in objects]]), yaw=torch.tensor([[o[3] for o in objects]]),
        color=torch.full((1, k, 3), 0.8))


def test_sphere_on_the_optical_axis_faces_the_camera_with_analytic_depth():
    # camera level (pitch 0), odd size: the centre pixel's ray is the optical axis (0, 0, 1)
    out = render(_scene([(SPHERE, (0.0, 0.0, 5.0), (1.0, 1.0, 1.0), 0.0)]), 33, 33)
    assert out["segmentation"][0, 16, 16] == SPHERE_CLASS
    assert out["depth"][0, 0, 16, 16].item() == pytest.approx(4.0, abs=1e-5)
    assert torch.allclose(out["normals"][0, :, 16, 16], torch.tensor([0.0, 0.0, -1.0]), atol=1e-5)
    # off-centre on the sphere the normal tilts towards that side: right of centre -> positive x
    assert out["segmentation"][0, 16, 19] == SPHERE_CLASS and out["normals"][0, 0, 16, 19] > 0.1
    assert out["normals"][0, 1, 13, 16] < -0.1  # above the centre (y down) -> negative y


def test_box_and_cylinder_normals_at_their_centre_pixel():
    for kind, size, cls in ((BOX, (1.0, 1.0, 1.0), BOX_CLASS), (CYLINDER, (1.0, 1.0, 1.0), CYLINDER_CLASS)):
        out = render(_scene([(kind, (0.0, 0.0, 6.0), size, 0.0)]), 33, 33)
        assert out["segmentation"][0, 16, 16] == cls
        assert out["depth"][0, 0, 16, 16].item() == pytest.approx(5.0, abs=1e-4)
        assert torch.allclose(out["normals"][0, :, 16, 16], torch.tensor([0.0, 0.0, -1.0]), atol=1e-5)
    # a box turned by 45 degrees shows an edge at the centre: its faces' normals point left and right
    out = render(_scene([(BOX, (0.0, 0.0, 6.0), (1.0, 1.0, 1.0), math.pi / 4)]), 33, 33)
    assert out["depth"][0, 0, 16, 16].item() == pytest.approx(6.0 - math.sqrt(2), abs=0.05)
    assert out["normals"][0, 0, 16, 12] < -0.5 and out["normals"][0, 0, 16, 20] > 0.5


def test_nearer_object_occludes_the_farther_one():
    # a sphere at 4 m overlapping (in the image) a larger box at 8 m, centred 1 m to the right
    sphere = (SPHERE, (0.0, 0.0, 4.0), (0.8, 0.8, 0.8), 0.0)
    box = (BOX, (1.0, 0.0, 8.0), (1.5, 1.5, 1.5), 0.0)
    for objects in ([sphere, box], [box, sphere]):  # slot order must not matter
        out = render(_scene(objects), 33, 33)
        seg, depth = out["segmentation"][0], out["depth"][0, 0]
        assert seg[16, 16] == SPHERE_CLASS and depth[16, 16].item() == pytest.approx(3.2, abs=1e-4)
        focal = 0.5 * 33 / math.tan(math.radians(30))  # pixels
        right = 16 + round(0.6 / 4.0 * focal)  # inside the sphere's disc (radius ~5.8 px), in front of the box
        assert seg[16, right] == SPHERE_CLASS
        far_right = 16 + round(2.0 / 6.5 * focal)  # beyond the sphere, on the box's front face (z = 6.5)
        assert seg[16, far_right] == BOX_CLASS and depth[16, far_right].item() == pytest.approx(6.5, abs=1e-4)
        both = (seg == SPHERE_CLASS) | (seg == BOX_CLASS)
        assert both.sum() > (seg == SPHERE_CLASS).sum() > 0
    # moved behind the box, the sphere disappears where they overlap
    hidden = render(_scene([(SPHERE, (1.0, 0.0, 10.0), (0.8, 0.8, 0.8), 0.0), box]), 33, 33)
    assert hidden["segmentation"][0, 16, 16 + round(1.0 / 10.0 * 28.6)] == BOX_CLASS  # the sphere's centre
    assert (hidden["segmentation"][0] == SPHERE_CLASS).sum() == 0


def test_objects_rest_on_a_visible_floor_with_a_depth_gradient():
    out = render(_scene([], pitch=0.3), 33, 33)
    seg, depth = out["segmentation"][0], out["depth"][0, 0]
    assert seg[-1].eq(0).all() and seg[0].eq(1).all()  # floor at the bottom, wall at the top
    column = depth[:, 16]
    floor_rows = seg[:, 16] == 0
    assert (column[floor_rows].diff() < 0).all()  # the floor gets nearer towards the bottom


def test_depth_sensor_modality():
    data = Scenes(n_train=8, n_val=2, n_test=2, image_size=32, depth_sensor=True, depth_dropout=0.1, seed=1)
    assert data.spec.modalities["depth"].kind == "image"
    assert data.spec.modalities["depth"].shape == (1, 32, 32)
    assert data.spec.modalities["depth"].args == {"in_channels": 1, "input_size": (32, 32)}
    batch = whole(data.dataset("train"))
    sensor, depth = batch["inputs"]["depth"], batch["targets"]["depth"]
    assert sensor.shape == depth.shape and sensor.dtype == torch.float32
    missing = sensor == 0
    assert 0.1 <= missing.float().mean() < 0.5
    assert not torch.equal(sensor[~missing], depth[~missing])  # noisy
    assert (sensor[~missing] - depth[~missing]).abs().max() < 1.0  # ... but close
    assert sensor.max() <= 10.0
    # data.modalities picks the RGB input alone
    rgb = Scenes(n_train=8, n_val=2, n_test=2, image_size=32, depth_sensor=True, seed=1, modalities=["image"])
    assert list(whole(rgb.dataset("train"))["inputs"]) == ["image"]
    assert "depth" not in Scenes(n_train=2, n_val=2, n_test=2, image_size=16).spec.modalities


def test_scenes_non_square_images_and_no_objects():
    data = Scenes(n_train=4, n_val=2, n_test=2, image_size=[16, 24], min_shapes=0, max_shapes=0)
    batch = whole(data.dataset("train"))
    assert batch["inputs"]["image"].shape == (4, 3, 16, 24) and data.spec.modalities["image"].shape == (3, 16, 24)
    assert batch["targets"]["segmentation"].max() <= 1  # floor and wall only


def test_scenes_config_errors_listed_at_once():
    with pytest.raises(ConfigError) as err:
        Scenes(n_train=0, image_size=4, min_shapes=3, max_shapes=2, depth_dropout=1.5, noise=-1)
    text = str(err.value)
    for key in ("data.n_train=0", "data.image_size=4", "data.min_shapes=3", "data.depth_dropout=1.5",
                "data.noise=-1"):
        assert key in text
    assert len(err.value.problems) == 5


def test_scenes_config_composes_with_its_tasks():
    from contracts import compose_config

    from mtlrun.build import build_tasks
    from mtlrun.instantiate import instantiate_node
    from mtlrun.task_selection import task_configs

    cfg = compose_config(["data=scenes", "tasks=scenes", "data.n_train=4", "data.n_val=2", "data.n_test=2",
                          "data.image_size=16"])
    data = instantiate_node(cfg.data, "data")
    tasks = build_tasks(cfg, data.spec)
    assert {name: task.kind for name, task in tasks.items()} == {
        "segmentation": "segmentation", "depth": "depth", "normals": "normals"}
    assert tasks["segmentation"].num_classes == len(CLASSES)
    for preset in ("scenes", "nyuv2"):  # both presets declare the reserved `only`
        assert list(task_configs(compose_config([f"tasks={preset}", "tasks.only=[depth]"]), None)) == ["depth"]


# ------------------------------------------------------------------------------------------- nyuv2

H, W = 24, 32


def _write_sample(folder: Path, i: int, rng: np.random.Generator, size=(H, W)):
    h, w = size
    image = rng.random((h, w, 3)).astype(np.float32)
    label = rng.integers(-1, 13, size=(h, w)).astype(np.float32)  # MTAN stores labels as floats
    depth = (rng.random((h, w, 1)) * 5 + 0.5).astype(np.float32)
    depth[rng.random((h, w, 1)) < 0.2] = 0.0
    normal = rng.standard_normal((h, w, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[depth[..., 0] == 0] = 0.0
    for name, array in (("image", image), ("label", label), ("depth", depth), ("normal", normal)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        np.save(folder / name / f"{i}.npy", array)


@pytest.fixture
def nyu_root(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "nyuv2"
    for split, n in (("train", 10), ("val", 5)):
        for i in range(n):
            _write_sample(root / split, i, rng)
    return root


def _file(root, split, folder, i):
    return np.load(root / split / folder / f"{i}.npy")


def test_nyuv2_splits_and_layout(nyu_root):
    data = NYUv2(root=str(nyu_root), val_size=0.2, seed=0)
    assert data.spec.modalities["image"].shape == (3, H, W)
    assert data.spec.targets["segmentation"].num_classes == 13
    names = data.split_names()
    train, val, test = (names[s][1] for s in ("train", "val", "test"))
    assert len(train) == 8 and len(val) == 2 and test == [str(i) for i in range(5)]
    assert sorted(train + val, key=int) == [str(i) for i in range(10)]
    assert names["test"][0] == nyu_root / "val"
    assert NYUv2(root=str(nyu_root), val_size=0.2, seed=0).split_names()["val"][1] == val
    assert NYUv2(root=str(nyu_root), val_size=3, seed=0).split_names()["val"][1] != val
    assert len(NYUv2(root=str(nyu_root), val_size=3, seed=0).split_names()["val"][1]) == 3
    assert len(data.dataset("train")) == 8 and len(data.dataset("val")) == 2 and len(data.dataset("test")) == 5

    batch = whole(data.dataset("test"))
    image, seg = batch["inputs"]["image"], batch["targets"]["segmentation"]
    depth, normals = batch["targets"]["depth"], batch["targets"]["normals"]
    assert image.shape == (5, 3, H, W) and image.dtype == torch.float32
    assert seg.shape == (5, H, W) and seg.dtype == torch.long
    assert depth.shape == (5, 1, H, W) and depth.dtype == torch.float32
    assert normals.shape == (5, 3, H, W) and normals.dtype == torch.float32
    # the values are the files', in channel-first layout; -1 (no label) and depth 0 kept
    assert torch.equal(image[2], torch.from_numpy(_file(nyu_root, "val", "image", 2)).permute(2, 0, 1))
    assert torch.equal(seg[2], torch.from_numpy(_file(nyu_root, "val", "label", 2)).long())
    assert (seg == -1).any() and (depth == 0).any()
    assert torch.equal(depth[2], torch.from_numpy(_file(nyu_root, "val", "depth", 2)).permute(2, 0, 1))
    assert torch.equal(normals[2], torch.from_numpy(_file(nyu_root, "val", "normal", 2)).permute(2, 0, 1))


def test_nyuv2_cache_matches_reading_files(nyu_root):
    files = whole(NYUv2(root=str(nyu_root), cache=False).dataset("train"))
    cached = whole(NYUv2(root=str(nyu_root), cache=True).dataset("train"))
    assert torch.equal(files["targets"]["segmentation"], cached["targets"]["segmentation"])
    assert torch.equal(files["targets"]["depth"], cached["targets"]["depth"])
    for a, b in ((files["inputs"]["image"], cached["inputs"]["image"]),
                 (files["targets"]["normals"], cached["targets"]["normals"])):
        assert a.dtype == b.dtype == torch.float32 and (a - b).abs().max() < 5e-4


def test_nyuv2_image_size_resizes_labels_with_nearest(nyu_root):
    data = NYUv2(root=str(nyu_root), image_size=[12, 16])
    assert data.spec.modalities["image"].shape == (3, 12, 16)
    batch = whole(data.dataset("test"))
    seg = batch["targets"]["segmentation"]
    assert batch["inputs"]["image"].shape == (5, 3, 12, 16) and seg.shape == (5, 12, 16)
    full = torch.from_numpy(_file(nyu_root, "val", "label", 0)).long()
    assert torch.equal(seg[0], full[1::2, 1::2])  # nearest-exact at half size: every other pixel
    norms = batch["targets"]["normals"].norm(dim=1)
    assert ((norms == 0) | ((norms - 1).abs() < 1e-5)).all()  # never blended


def test_nyuv2_missing_files_say_what_is_expected(tmp_path, nyu_root):
    with pytest.raises(UsageError) as err:
        NYUv2(root=str(tmp_path / "nowhere"))
    text = str(err.value)
    assert str((tmp_path / "nowhere" / "train").resolve()) in text and MTAN_URL in text and LIBMTL_URL in text
    assert "data.download=true is not available" in text and "image/, label/, depth/, normal/" in text
    with pytest.raises(UsageError, match="data.download=true is not available"):
        NYUv2(root=str(nyu_root), download=True)
    (nyu_root / "val" / "depth" / "3.npy").unlink()
    with pytest.raises(UsageError) as err:
        NYUv2(root=str(nyu_root)).dataset("train")
    assert "3.npy" in str(err.value) and str((nyu_root / "val" / "depth").resolve()) in str(err.value)


def test_nyuv2_corrupt_and_malformed_files_are_named(nyu_root):
    bad = nyu_root / "train" / "normal" / "4.npy"
    bad.write_bytes(b"not a numpy file")
    with pytest.raises(UsageError) as err:
        NYUv2(root=str(nyu_root)).dataset("train")
    assert str(bad) in str(err.value) and "corrupt" in str(err.value)
    np.save(bad, np.zeros((H, W), dtype=np.float32))  # wrong shape
    with pytest.raises(UsageError) as err:
        NYUv2(root=str(nyu_root)).dataset("train")
    assert str(bad) in str(err.value) and "[H, W, 3]" in str(err.value)
    np.save(bad, np.zeros((H, W, 3), dtype=np.float32))
    label = nyu_root / "val" / "label" / "1.npy"
    np.save(label, np.full((H, W), 13.0, dtype=np.float32))  # not a class id
    test = NYUv2(root=str(nyu_root)).dataset("test")  # headers are fine: values are checked when read
    with pytest.raises(UsageError) as err:
        whole(test)
    assert str(label) in str(err.value) and "13" in str(err.value)
    with pytest.raises(UsageError) as err:
        NYUv2(root=str(nyu_root), cache=True).dataset("train")
    assert str(label) in str(err.value)


def test_nyuv2_size_mismatch_needs_image_size(nyu_root):
    _write_sample(nyu_root / "val", 5, np.random.default_rng(1), size=(20, 32))
    with pytest.raises(UsageError, match="data.image_size"):
        NYUv2(root=str(nyu_root)).dataset("test")
    assert len(NYUv2(root=str(nyu_root), image_size=[24, 32]).dataset("test")) == 6


def test_nyuv2_config_errors(nyu_root):
    with pytest.raises(ConfigError) as err:
        NYUv2(root=str(nyu_root), val_size=1.5, image_size=3, cache="yes")
    assert len(err.value.problems) == 3
    with pytest.raises(UsageError, match="data.val_size=10"):
        NYUv2(root=str(nyu_root), val_size=10).dataset("train")


def test_nyuv2_augment_is_train_only_and_consistent_across_targets(nyu_root):
    data = NYUv2(root=str(nyu_root), augment=True, cache=True)
    test_a, test_b = whole(data.dataset("test")), whole(data.dataset("test"))
    assert torch.equal(test_a["inputs"]["image"], test_b["inputs"]["image"])  # no augmentation
    torch.manual_seed(0)
    train = whole(data.dataset("train"))
    assert train["inputs"]["image"].shape == (9, 3, H, W) and train["targets"]["segmentation"].dtype == torch.long
    # one id per pixel, written into every target: after the augmentation each pixel's targets must still
    # come from one and the same source pixel (nearest sampling on one shared grid)
    b = 16
    ids = torch.arange(H * W, dtype=torch.float32).view(1, 1, H, W).expand(b, 1, H, W)
    batch = {"inputs": {"image": torch.rand(b, 3, H, W)},
             "targets": {"segmentation": (ids[:, 0] % 13).long(), "depth": 1.0 + ids,
                         "normals": torch.cat([ids, ids, -ids], 1)}}
    torch.manual_seed(1)
    out = random_scale_crop_flip(batch)
    n = out["targets"]["normals"]
    flipped = n[:, 0, 0, 0] < 0  # x component negated by a flip
    assert flipped.any() and (~flipped).any()
    source = n[:, 1]
    assert torch.equal(n[:, 0].abs(), source) and torch.equal(n[:, 2], -source)
    assert torch.equal(out["targets"]["segmentation"], (source % 13).long())
    scale = (1.0 + source) / out["targets"]["depth"][:, 0]  # depth was divided by the sample's scale
    assert torch.allclose(scale, scale[:, :1, :1].expand_as(scale), rtol=1e-5)
    assert {round(s, 4) for s in scale[:, 0, 0].tolist()} <= {1.0, 1.2, 1.5}
    # scale 1 and a flip: exactly the mirrored image and targets
    torch.manual_seed(2)
    plain = random_scale_crop_flip(batch, scales=(1.0,))
    for i in range(b):
        flip = plain["targets"]["normals"][i, 0, 0, 0] < 0
        expected = batch["inputs"]["image"][i].flip(-1) if flip else batch["inputs"]["image"][i]
        assert torch.allclose(plain["inputs"]["image"][i], expected, atol=1e-5)
        expected_seg = batch["targets"]["segmentation"][i].flip(-1) if flip else batch["targets"]["segmentation"][i]
        assert torch.equal(plain["targets"]["segmentation"][i], expected_seg)


def test_nyuv2_config_composes_with_its_tasks(nyu_root):
    from contracts import compose_config

    from mtlrun.build import build_tasks
    from mtlrun.instantiate import instantiate_node

    cfg = compose_config(["data=nyuv2", "tasks=nyuv2", f"data.root={nyu_root}"])
    data = instantiate_node(cfg.data, "data")
    tasks = build_tasks(cfg, data.spec)
    assert tasks["segmentation"].num_classes == 13 and tasks["segmentation"].ignore_index == -1
    assert set(tasks) == {"segmentation", "depth", "normals"}


# ----------------------------------------------------------------------------- end to end (CLI)


E2E_ARCHS = ["mtan", "cross_stitch"]


@pytest.fixture(scope="module")
def scenes_sweep(tmp_path_factory) -> dict[str, Path]:
    """`mtlrun train -m experiment=scenes_hps arch=mtan,cross_stitch` on tiny scenes: {arch: run dir}."""
    root = tmp_path_factory.mktemp("scenes")
    tiny = ["experiment=scenes_hps", f"arch={','.join(E2E_ARCHS)}", "data.n_train=16", "data.n_val=8", "data.n_test=8",
            "data.image_size=16", "data.batch_size=8", "backbone.image.channels=[8,16]", "trainer.max_epochs=2",
            "trainer.device=cpu", "trainer.progress_bar=false"]
    proc = run_cli("train", "-m", *tiny, f"hydra.sweep.dir={root / 'sweep'}", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {arch: root / "sweep" / str(job) for job, arch in enumerate(E2E_ARCHS)}


@pytest.mark.e2e
@pytest.mark.parametrize("arch", E2E_ARCHS)
def test_stagewise_archs_train_and_evaluate_dense_tasks_end_to_end(tmp_path, scenes_sweep, arch):
    """`mtlrun train experiment=scenes_hps arch=...` on tiny scenes, then `mtlrun eval` of its best checkpoint
    gives the same test metrics (every dense metric finite and in range)."""
    run = scenes_sweep[arch]
    assert f"arch={arch}" in (run / ".hydra" / "overrides.yaml").read_text()
    trained = read_results(run)
    assert 0 <= trained["test/segmentation/miou"] <= 1 and 0 <= trained["test/segmentation/pixel_accuracy"] <= 1
    assert trained["test/depth/abs_err"] > 0 and 0 <= trained["test/normals/mean_angle"] <= 180
    assert 0 <= trained["test/normals/within_11_25"] <= trained["test/normals/within_30"] <= 1

    evaluated = tmp_path / "eval"
    proc = run_cli("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", f"hydra.run.dir={evaluated}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read_results(evaluated) == pytest.approx({k: v for k, v in trained.items() if k.startswith("test/")})
