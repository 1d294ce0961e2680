"""Dense (per-pixel) prediction: the encoder-decoder backbones (`backbone/image=segnet`, `resnet_dense`),
the heads chosen per task, and every sharing architecture on them.

Small fake tasks stand in for mtlrun.tasks' dense types (tested in test_dense_tasks.py), so these tests
need nothing of a task but `output_dim`, `dense = True` and a loss. Every arch of configs/arch x both
backbones, built from the shipped YAMLs, with a segmentation-like (5 classes), a depth-like (1 channel)
and a vector classification task: prediction shapes at 32 x 32 and at sizes that halve to odd ones, the
model contract checks of tests/contracts.py (parameter partition, gradients factorizing through the
shared representation), one optimizer step.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from contracts import check_gradient_factorizes, check_parameter_partition, compose_config, losses_of
from mtlrun.build import build_components
from mtlrun.config import config_dir
from mtlrun.instantiate import instantiate_node
from mtlrun.data.loading import train_loader
from mtlrun.errors import UsageError
from mtlrun.models.backbone.dense import ResNetDense, SegNetLite, decoder_sizes
from mtlrun.models.backbone.image import ResNet
from mtlrun.models.heads import make_heads
from mtlrun.models.arch.mtan import _resize
from mtlrun.tasks import Classification

CONFIGS = Path(config_dir())
ARCHS = sorted(p.stem for p in (CONFIGS / "arch").glob("*.yaml"))
# timm_dense (a timm model's stages + the same decoder) when the timm extra is installed
BACKBONES = ("segnet", "resnet_dense", *(("timm_dense",) if importlib.util.find_spec("timm") else ()))
# timm's resnet18 takes a 32 px image down to 1 x 1 in its fifth stage, where BatchNorm over a batch of 2
# sees 2 values a channel; four stages (2 x 2) keep the one-step test meaningful
BACKBONE_OPTIONS = {"timm_dense": {"out_indices": [0, 1, 2, 3]}}
CASES = [(arch, backbone) for backbone in BACKBONES for arch in ARCHS]
IDS = [f"{arch}-{backbone}" for arch, backbone in CASES]


class FakeSegmentation:
    """A stand-in dense task: per-pixel classes, [B, C, H, W] logits against [B, H, W] labels."""

    dense = True

    def __init__(self, num_classes: int):
        self.output_dim = num_classes

    def loss(self, pred, target, mask):
        return F.cross_entropy(pred.float(), target)


class FakeDepth:
    """A stand-in dense regression task: [B, 1, H, W] against [B, 1, H, W]."""

    dense = True
    output_dim = 1

    def loss(self, pred, target, mask):
        return F.l1_loss(pred.float(), target)


def make_tasks() -> dict:
    return {"seg": FakeSegmentation(5), "depth": FakeDepth(), "cls": Classification(num_classes=3)}


def make_batch(size, batch=2, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    h, w = size
    return {"inputs": {"image": torch.rand(batch, 3, h, w, generator=g)},
            "targets": {"seg": torch.randint(0, 5, (batch, h, w), generator=g),
                        "depth": torch.rand(batch, 1, h, w, generator=g),
                        "cls": torch.randint(0, 3, (batch,), generator=g)}}


def build_model(arch: str, backbone: str, size, tasks=None, seed=0, **arch_options):
    """arch(backbone) from the shipped configs/arch/<arch>.yaml and configs/backbone/image/<backbone>.yaml."""
    arch_node = OmegaConf.load(CONFIGS / "arch" / f"{arch}.yaml")
    arch_node.merge_with(arch_options)
    encoder_node = OmegaConf.load(CONFIGS / "backbone" / "image" / f"{backbone}.yaml")
    encoder_node.merge_with(BACKBONE_OPTIONS.get(backbone, {}))
    torch.manual_seed(seed)
    return instantiate_node(arch_node, "arch")(
        make_encoder=lambda: instantiate_node(encoder_node, "backbone.image", in_channels=3, input_size=tuple(size)),
        tasks=make_tasks() if tasks is None else tasks, modality="image")


def expected_shapes(batch: int, size) -> dict:
    return {"seg": (batch, 5, *size), "depth": (batch, 1, *size), "cls": (batch, 3)}


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def built(request):
    """(model, tasks, batch) at 32 x 32, built once per case for the tests that do not change the weights."""
    arch, backbone = request.param
    tasks = make_tasks()
    return build_model(arch, backbone, (32, 32), tasks), tasks, make_batch((32, 32))


# ------------------------------------------------------------------------------ every arch x backbone


def test_prediction_shapes_at_32px(built):
    model, tasks, batch = built
    model.eval()
    with torch.no_grad():
        preds, shared = model(batch["inputs"], return_shared=True)
        plain = model(batch["inputs"])
    assert {t: tuple(p.shape) for t, p in preds.items()} == expected_shapes(2, (32, 32))
    for t in tasks:
        torch.testing.assert_close(plain[t], preds[t], rtol=0, atol=0)
    assert (shared is None) == (not type(model).has_shared_representation)


@pytest.mark.parametrize("arch,backbone", CASES, ids=IDS)
def test_prediction_shapes_at_sizes_that_halve_to_odd_ones(arch, backbone):
    size = (50, 70)  # pools to 25 x 35, then 12 x 17 (13 x 18 and 7 x 9 in the ResNet)
    model = build_model(arch, backbone, size).eval()
    with torch.no_grad():
        preds = model(make_batch(size, batch=1)["inputs"])
    assert {t: tuple(p.shape) for t, p in preds.items()} == expected_shapes(1, size)


def test_shared_and_task_parameters_partition_all_parameters(built):
    check_parameter_partition(*built)


def test_task_gradient_factorizes_through_shared_representation(built):
    check_gradient_factorizes(*built)


def test_one_optimizer_step_changes_the_weights_and_reduces_the_loss(built):
    model, tasks, batch = built
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)

    def objective():
        total = sum(losses_of(model(batch["inputs"]), tasks, batch).values())
        regularizer = model.regularizer()
        return total if regularizer is None else total + regularizer

    before = objective()
    before.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), "a parameter got no or a non-finite grad"
    weights = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    changed = [not torch.equal(w, p) for w, p in zip(weights, model.parameters())]
    if any(type(m).__module__.startswith("timm.") for m in model.modules()):
        # timm's ResNets zero-init each block's last BatchNorm (zero_init_last), so the conv before it gets
        # an exactly zero gradient in the first step: leave those out
        changed = [c for c, g in zip(changed, grads) if g.any()]
    # nearly all: the first attention masks of an 8-stage MTAN get gradients ~1e-7, an SGD step below
    # float32 resolution
    assert sum(changed) > 0.9 * len(changed)
    with torch.no_grad():
        after = objective()
    assert torch.isfinite(before) and torch.isfinite(after)
    assert after < before.detach()


# --------------------------------------------------------------------------------------------- heads


@pytest.mark.parametrize("arch", ARCHS)
def test_dense_task_on_a_vector_encoder_is_a_usage_error(arch):
    with pytest.raises(UsageError, match=r"tasks\.seg: a dense task .* SmallCNN outputs one vector per sample.*"
                                         r"backbone/image=segnet"):
        build_model(arch, "cnn", (16, 16))


def test_heads_follow_encoder_and_task():
    model = build_model("hps", "segnet", (16, 16), head_hidden=8, head_dropout=0.1)
    seg, depth, cls = (model.heads[t] for t in ("seg", "depth", "cls"))
    assert isinstance(seg[0], nn.Conv2d) and seg[0].out_channels == 8 and seg[-1].out_channels == 5
    assert isinstance(depth[-1], nn.Conv2d) and depth[-1].out_channels == 1
    assert isinstance(cls[0], nn.AdaptiveAvgPool2d) and cls[-1][-1].out_features == 3  # pool, then the MLP head
    narrow = build_model("hps", "segnet", (16, 16))  # head_hidden=0: the 3x3 conv keeps the map's width
    assert narrow.heads["seg"][0].out_channels == narrow.encoder.out_dim == 32
    # a vector encoder keeps the plain linear head
    plain = make_heads({"cls": Classification(num_classes=3)}, build_model("hps", "cnn", (16, 16), tasks={
        "cls": Classification(num_classes=3)}).encoder)
    assert isinstance(plain["cls"], nn.Linear)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_vector_tasks_train_on_a_dense_backbone_from_the_real_config(backbone):
    """`mtlrun train backbone/image=<dense>` on multidigits (vector tasks only): pooled heads."""
    cfg = compose_config([f"backbone/image={backbone}", "arch=mtan", "data.n_train=8", "data.n_val=4",
                          "data.n_test=4", "data.batch_size=4"])
    parts = build_components(cfg)
    batch = next(iter(train_loader(parts.data.dataset("train"), batch_size=4, seed=0, epoch=0)))
    preds = parts.model(batch["inputs"])
    assert {t: tuple(p.shape) for t, p in preds.items()} == {"left": (4, 10), "right": (4, 10)}


# ------------------------------------------------------------------------------------------ encoders


def _stage_outputs(encoder, x):
    outputs = []
    for stage in encoder.stages:
        x = stage(x)
        outputs.append(x)
    return outputs


@pytest.mark.parametrize("make,size", [
    (lambda s: SegNetLite(3, s), (32, 32)),
    (lambda s: SegNetLite(1, s, channels=(8, 16, 16, 16), convs=1, upsample="nearest"), (17, 23)),
    (lambda s: ResNetDense(3, s), (50, 70)),
    (lambda s: ResNetDense(1, s, small_input=False, decoder_channels=(16, 8)), (70, 90)),  # 32x down, 2 up
], ids=["segnet", "segnet-nearest-odd", "resnet_dense", "resnet_dense-large-input"])
def test_encoder_decoder_stage_api_ends_at_the_input_size(make, size):
    encoder = make(size).eval()
    x = torch.rand(2, encoder.in_channels, *size)
    with torch.no_grad():
        outputs = _stage_outputs(encoder, x)
        assert [o.shape[1] for o in outputs] == list(encoder.stage_channels)
        assert outputs[-1].shape == (2, encoder.out_dim, *size)
        assert encoder.dense is True and isinstance(encoder.project, nn.Identity)
        torch.testing.assert_close(encoder(x), outputs[-1], rtol=0, atol=0)
        vector, tokens, mask = encoder.encode(x)
    assert vector.shape == (2, encoder.out_dim) and tokens.shape == (2, size[0] * size[1], encoder.out_dim)
    assert mask is None


def test_segnet_decoder_mirrors_the_encoder():
    encoder = SegNetLite(3, (50, 70)).eval()
    with torch.no_grad():
        outputs = _stage_outputs(encoder, torch.rand(1, 3, 50, 70))
    assert [tuple(o.shape[-2:]) for o in outputs] == [(50, 70), (25, 35), (12, 17), (25, 35), (50, 70)]
    assert encoder.stage_channels == (32, 64, 128, 64, 32)


def test_construction_leaves_batchnorm_statistics_alone():
    for encoder in (SegNetLite(3, (16, 16), channels=(4, 8)), ResNetDense(3, (16, 16), decoder_channels=(8,))):
        for bn in (m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)):
            assert torch.equal(bn.running_var, torch.ones_like(bn.running_var)) and bn.num_batches_tracked == 0
        assert encoder.training


def test_resnet_dense_encoder_is_the_resnet():
    dense, resnet = ResNetDense(1, (16, 16), depth=18), ResNet(1, (16, 16), depth=18)
    assert dense.stage_channels[:5] == resnet.stage_channels
    encoder_keys = [k for k in dense.state_dict() if int(k.split(".")[1]) < 5]
    assert encoder_keys == list(resnet.state_dict())


def test_resnet_dense_pretrained_uses_the_resnet_cache_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    with pytest.raises(UsageError, match="not in the local torch cache"):
        ResNetDense(3, (16, 16), pretrained=True)
    assert not any(tmp_path.rglob("*.pth"))  # never downloads


def test_decoder_sizes_mirror_the_encoder_and_end_at_the_input():
    small = [(32, 32), (32, 32), (16, 16), (8, 8), (4, 4)]  # a ResNet on 32 px, stride-1 stem
    assert decoder_sizes(small, (32, 32), 3) == [(8, 8), (16, 16), (32, 32)]
    assert decoder_sizes(small, (32, 32), 4) == [(8, 8), (16, 16), (32, 32), (32, 32)]
    large = [(56, 56), (56, 56), (28, 28), (14, 14), (7, 7)]  # on 224 px
    assert decoder_sizes(large, (224, 224), 3) == [(28, 28), (56, 56), (224, 224)]
    assert decoder_sizes(large, (224, 224), 1) == [(224, 224)]


@pytest.mark.parametrize("make,message", [
    (lambda: SegNetLite(3, (16, 16), upsample="bicubic"), r"backbone\.image\.upsample=bicubic: valid: bilinear"),
    (lambda: SegNetLite(3, (16, 16), channels=[]), r"backbone\.image\.channels=\[\]"),
    (lambda: SegNetLite(3, (16, 16), convs=0), r"backbone\.image\.convs=0"),
    (lambda: SegNetLite(3, (4, 4), channels=(4, 4, 4, 4, 4)), r"shrink a 4x4 image to nothing"),
    (lambda: ResNetDense(3, (16, 16), decoder_channels=[]), r"backbone\.image\.decoder_channels=\[\]"),
])
def test_bad_options_are_usage_errors(make, message):
    with pytest.raises(UsageError, match=message):
        make()


def test_mtan_bridge_upsamples_into_decoder_stages():
    x = torch.rand(1, 2, 4, 6)
    torch.testing.assert_close(_resize(x, torch.Size([8, 12])),
                               F.interpolate(x, size=(8, 12), mode="bilinear", align_corners=False))
    torch.testing.assert_close(_resize(x, torch.Size([2, 3])), F.adaptive_max_pool2d(x, (2, 3)))
