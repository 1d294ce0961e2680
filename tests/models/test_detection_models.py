"""The detection task in a model: its head on every sharing architecture whose shared representation is a
feature map (the model contract of tests/contracts.py), a usage error naming the arch and the task where the
backbone gives one vector per image, and one training step of experiment=scenes_det under every weighting at
each of its grad_on levels, with accumulation and with bf16 and fp16 autocast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from contracts import check_gradient_factorizes, check_parameter_partition, compose_config, requires
from mtlrun.build import build_trainer
from mtlrun.config import config_dir
from mtlrun.distributed import DistInfo
from mtlrun.errors import UsageError
from mtlrun.instantiate import instantiate_node
from mtlrun.tasks import Depth, Detection

pytestmark = requires("torchmetrics", "detection")

CONFIGS = Path(config_dir())
MAP_ARCHS = ("hps", "mtan", "cross_stitch", "mmoe", "ple")
WEIGHTINGS = sorted(p.stem for p in (CONFIGS / "weighting").glob("*.yaml"))
TINY = ["experiment=scenes_det", "data.n_train=8", "data.n_val=4", "data.n_test=4", "data.batch_size=4",
        "data.image_size=16", "backbone.image.channels=[4,8]", "trainer.device=cpu"]


def make_tasks():
    detection = Detection(num_classes=3, stride=4)
    detection.name = "det"
    return {"det": detection, "depth": Depth()}


def build_model(arch: str, backbone: str = "segnet", size=(16, 16)):
    arch_node = OmegaConf.load(CONFIGS / "arch" / f"{arch}.yaml")
    encoder_node = OmegaConf.load(CONFIGS / "backbone" / "image" / f"{backbone}.yaml")
    if backbone == "segnet":
        encoder_node.channels = [4, 8]
    torch.manual_seed(0)
    return instantiate_node(arch_node, "arch")(
        make_encoder=lambda: instantiate_node(encoder_node, "backbone.image", in_channels=3, input_size=size),
        tasks=make_tasks(), modality="image")


def make_batch(batch=2):
    target = torch.full((batch, 3, 5), -1.0)
    target[0, 0] = torch.tensor([2.0, 3.0, 12.0, 14.0, 1.0])  # image 1 is a background image
    return {"inputs": {"image": torch.rand(batch, 3, 16, 16)},
            "targets": {"det": target, "depth": torch.rand(batch, 1, 16, 16) + 0.5}}


@pytest.mark.parametrize("arch", MAP_ARCHS)
def test_detection_head_on_every_feature_map_arch(arch):
    model, tasks, batch = build_model(arch), make_tasks(), make_batch()
    preds = model(batch["inputs"])
    assert tuple(preds["det"].shape) == (2, 3 + 5, 4, 4)  # 16 px at stride 4
    check_parameter_partition(model, tasks)
    check_gradient_factorizes(model, tasks, batch)


@pytest.mark.parametrize("arch", MAP_ARCHS)
def test_detection_on_a_vector_backbone_is_a_usage_error_naming_arch_and_task(arch):
    with pytest.raises(UsageError, match=rf"tasks\.det: a detection task reads a feature map, but with "
                                         rf"arch={arch} .*SmallCNN.*backbone/image=segnet"):
        build_model(arch, "cnn")


def _levels(weighting: str) -> list[str | None]:
    declared = OmegaConf.load(CONFIGS / "weighting" / f"{weighting}.yaml").get("grad_on")
    return [None] if declared is None else ["parameters", "representation"]


CASES = [(w, level) for w in WEIGHTINGS for level in _levels(w)]


def _one_step(tmp_path, overrides):
    trainer = build_trainer(compose_config([*TINY, *overrides]), tmp_path, dist=DistInfo())
    batches = list(trainer.data.train_loader(epoch=0, seed=0, device=trainer.device))
    before = [p.detach().clone() for p in trainer.model.heads["detection"].parameters()]
    trainer.step(batches[:trainer.accumulate])
    if trainer.scaler is not None:  # float16: the scaler skips the steps whose gradients overflow at its scale
        for _ in range(16):
            if any(not torch.equal(a, b) for a, b in zip(trainer.model.heads["detection"].parameters(), before)):
                break
            trainer.step(batches[:trainer.accumulate])
    after = list(trainer.model.heads["detection"].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before)), "the detection head did not train"
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.parametrize("weighting,grad_on", CASES, ids=[f"{w}-{g}" for w, g in CASES])
def test_one_step_of_every_weighting_at_every_level(tmp_path, weighting, grad_on):
    if weighting in ("cagrad", "nash_mtl"):
        pytest.importorskip("cvxpy")
    if weighting in ("upgrad", "dualproj"):
        pytest.importorskip("quadprog")
    if weighting == "fairgrad":
        pytest.importorskip("scipy")
    _one_step(tmp_path, [f"weighting={weighting}", *([f"weighting.grad_on={grad_on}"] if grad_on else [])])


@pytest.mark.parametrize("overrides", [
    ["trainer.accumulate=2"],
    ["weighting=upgrad", "weighting.grad_on=representation", "trainer.accumulate=2"],
    ["trainer.precision=bf16"],
    ["trainer.precision=16"],  # float16 with the gradient scaler
], ids=["accumulate", "upgrad-representation-accumulate", "bf16", "fp16"])
def test_accumulation_and_autocast(tmp_path, overrides):
    pytest.importorskip("quadprog")
    _one_step(tmp_path, overrides)
