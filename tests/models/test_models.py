"""Image encoders, hard parameter sharing and the model contract (shared vs task parameters)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mtlrun.errors import UsageError
from mtlrun.models.backbone.base import StagedEncoder
from mtlrun.models.backbone.image import ResNet, SmallCNN
from mtlrun.models.arch.hps import HardParameterSharing
from mtlrun.tasks import Binary, Classification, Regression




@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def x16(batch=2, channels=1, size=16):
    return torch.rand(batch, channels, size, size)


# ---------------------------------------------------------------------------------------------- encoders


@pytest.mark.parametrize("channels,out_dim", [((32, 64, 128), 256), ((8, 16), 24)])
def test_small_cnn_output_shape(channels, out_dim):
    enc = SmallCNN(in_channels=1, input_size=(16, 16), channels=channels, out_dim=out_dim)
    assert enc.out_dim == out_dim
    assert enc(x16(3)).shape == (3, out_dim)


def test_small_cnn_other_input_sizes_and_channels():
    enc = SmallCNN(in_channels=3, input_size=(12, 20), channels=(4, 8, 8), out_dim=10)
    assert enc(torch.rand(2, 3, 12, 20)).shape == (2, 10)


@pytest.mark.parametrize("depth,features", [(18, 512), (34, 512), (50, 2048)])
def test_resnet_output_shape_small_input(depth, features):
    enc = ResNet(in_channels=1, input_size=(16, 16), depth=depth).eval()
    assert enc.out_dim == features
    # small_input defaults on for 16 px: 3x3 stride-1 stem on 1 channel, no max-pool
    stem = enc.stages[0]
    assert stem.conv1.kernel_size == (3, 3) and stem.conv1.stride == (1, 1)
    assert stem.conv1.in_channels == 1
    assert isinstance(stem.maxpool, nn.Identity)
    with torch.no_grad():
        assert enc(x16(2)).shape == (2, features)


def test_resnet_projection_and_large_input_stem():
    enc = ResNet(in_channels=1, input_size=(16, 16), depth=18, out_dim=32).eval()
    assert enc.out_dim == 32
    with torch.no_grad():
        assert enc(x16(2)).shape == (2, 32)
    big = ResNet(in_channels=2, input_size=(64, 64), depth=18).eval()
    stem = big.stages[0]
    assert stem.conv1.kernel_size == (7, 7) and stem.conv1.stride == (2, 2)
    assert stem.conv1.in_channels == 2
    assert isinstance(stem.maxpool, nn.MaxPool2d)
    with torch.no_grad():
        assert big(torch.rand(1, 2, 64, 64)).shape == (1, 512)


def test_resnet_unknown_depth_is_a_usage_error():
    with pytest.raises(UsageError, match=r"backbone\.image\.depth=20 is not available; valid: 18, 34, 50"):
        ResNet(in_channels=1, input_size=(16, 16), depth=20)


def _run_stages(enc, x):
    features = []
    for stage in enc.stages:
        x = stage(x)
        features.append(x)
    return features


@pytest.mark.parametrize("make", [lambda: SmallCNN(1, (16, 16), channels=(4, 8, 16), out_dim=12),
                                  lambda: ResNet(1, (16, 16), depth=18), lambda: ResNet(1, (16, 16), depth=50)],
                         ids=["cnn", "resnet18", "resnet50"])
def test_stage_api_composes_to_forward(make):
    enc = make().eval()
    assert isinstance(enc, StagedEncoder) and isinstance(enc.stages, nn.ModuleList)
    x = x16(2)
    with torch.no_grad():
        features = _run_stages(enc, x)
        assert [f.shape[1] for f in features] == list(enc.stage_channels)
        assert enc.in_channels == 1
        torch.testing.assert_close(enc.project(features[-1]), enc(x), rtol=0, atol=0)


def test_small_cnn_construction_leaves_batchnorm_statistics_alone():
    enc = SmallCNN(in_channels=1, input_size=(16, 16), channels=(4, 8))
    for bn in (m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        assert bn.num_batches_tracked == 0


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_stages_compute_what_torchvision_computes(depth):
    import torchvision

    enc = ResNet(in_channels=1, input_size=(16, 16), depth=depth).eval()
    reference = torchvision.models.get_model(f"resnet{depth}", weights=None)
    reference.conv1 = nn.Conv2d(1, 64, 3, stride=1, padding=1, bias=False)
    reference.maxpool, reference.fc = nn.Identity(), nn.Identity()
    names = {"0": "", "1": "layer1.", "2": "layer2.", "3": "layer3.", "4": "layer4."}
    state = {names[k.split(".")[1]] + k.split(".", 2)[2]: v for k, v in enc.state_dict().items()}
    reference.load_state_dict(state)
    x = x16(2)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), reference.eval()(x))


# ----------------------------------------------------------------------------------- pretrained weights


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # undo any torch.hub.set_dir of this process
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"
    return tmp_path


def _expected_weights_path(depth: int, torch_home: Path) -> Path:
    import torchvision

    url = torchvision.models.get_model_weights(f"resnet{depth}").IMAGENET1K_V1.url
    return torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]


@pytest.mark.parametrize("depth", [18, 50])
def test_pretrained_without_cached_weights_is_a_usage_error(empty_torch_home, depth):
    expected = _expected_weights_path(depth, empty_torch_home)
    with pytest.raises(UsageError) as info:
        ResNet(in_channels=1, input_size=(16, 16), depth=depth, pretrained=True)
    message = str(info.value)
    assert str(expected) in message
    assert "pretrained=false" in message
    assert f"resnet{depth}" in message
    assert not expected.exists()  # never downloads


def test_pretrained_with_corrupt_cached_weights_is_a_usage_error(empty_torch_home):
    path = _expected_weights_path(18, empty_torch_home)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(UsageError, match="cannot read") as info:
        ResNet(in_channels=1, input_size=(16, 16), depth=18, pretrained=True)
    assert str(path) in str(info.value)


def test_pretrained_loads_cached_weights_and_sums_rgb_stem(empty_torch_home):
    import torchvision

    reference = torchvision.models.resnet18(weights=None).state_dict()
    path = _expected_weights_path(18, empty_torch_home)
    path.parent.mkdir(parents=True)
    torch.save(reference, path)
    enc = ResNet(in_channels=1, input_size=(64, 64), depth=18, pretrained=True, small_input=False)
    state = enc.state_dict()
    assert torch.equal(state["stages.1.0.conv1.weight"], reference["layer1.0.conv1.weight"])
    assert torch.equal(state["stages.4.1.bn2.running_var"], reference["layer4.1.bn2.running_var"])
    torch.testing.assert_close(state["stages.0.conv1.weight"], reference["conv1.weight"].sum(dim=1, keepdim=True))
    assert not any("fc" in key for key in state)


# ------------------------------------------------------------------------------------ hard sharing


def make_hps(head_hidden=0):
    tasks = {"digit": Classification(num_classes=10), "xy": Regression(dim=3), "flag": Binary()}
    model = HardParameterSharing(make_encoder=lambda: SmallCNN(1, (16, 16), channels=(4, 8), out_dim=12),
                                 tasks=tasks, modality="image", head_hidden=head_hidden)
    return model, tasks


@pytest.mark.parametrize("head_hidden", [0, 7])
def test_hps_output_shapes(head_hidden):
    model, tasks = make_hps(head_hidden)
    preds = model({"image": x16(5)})
    assert set(preds) == set(tasks)
    assert preds["digit"].shape == (5, 10)
    assert preds["xy"].shape == (5, 3)
    assert preds["flag"].shape == (5, 1)


def test_hps_return_shared_is_the_encoder_representation():
    model, _ = make_hps()
    model.eval()
    x = {"image": x16(4)}
    with torch.no_grad():
        preds, shared = model(x, return_shared=True)
        assert shared.shape == (4, 12)
        torch.testing.assert_close(shared, model.encoder(x["image"]))
        for name, head in model.heads.items():
            torch.testing.assert_close(preds[name], head(shared))
        plain = model(x)
    assert plain.keys() == preds.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], preds[name])


@pytest.mark.parametrize("head_hidden", [0, 7])
def test_shared_and_task_parameters_partition_all_parameters(head_hidden):
    model, tasks = make_hps(head_hidden)
    all_ids = [id(p) for p in model.parameters()]
    shared = [id(p) for p in model.shared_parameters()]
    per_task = {t: [id(p) for p in model.task_parameters(t)] for t in tasks}
    groups = [shared, *per_task.values()]
    assert all(groups), "every group owns parameters"
    flat = [i for g in groups for i in g]
    assert len(flat) == len(set(flat)), "groups overlap"
    assert sorted(flat) == sorted(all_ids)
    assert set(shared) == {id(p) for p in model.encoder.parameters()}
    for t in tasks:
        assert set(per_task[t]) == {id(p) for p in model.heads[t].parameters()}


def test_task_loss_gradient_reaches_only_shared_and_own_head():
    model, tasks = make_hps()
    preds = model({"image": x16(4)})
    tasks["digit"].loss(preds["digit"], torch.tensor([1, 2, 3, 4]), None).backward()
    assert all(p.grad is not None for p in model.task_parameters("digit"))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.shared_parameters())
    for other in ("xy", "flag"):
        assert all(p.grad is None for p in model.task_parameters(other))
