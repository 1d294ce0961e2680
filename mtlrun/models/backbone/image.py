"""Image encoders: a small CNN for CPU-sized inputs and torchvision ResNets.

Each maps [B, C, H, W] to a feature vector [B, out_dim] through the stage API of `StagedEncoder`:
`project(stages[-1](...stages[0](x)))`, which the stage-wise sharing architectures (cross-stitch, MTAN,
MMoE, PLE) take apart.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from mtlrun.checks import check_range, check_widths
from mtlrun.errors import UsageError
from mtlrun.models.backbone.base import StagedEncoder


class SmallCNN(StagedEncoder):
    """Conv-BN-ReLU blocks (one stage each), each halving the resolution after the first, then a projection.

    The last feature map is flattened rather than globally pooled: on multidigits *where* a stroke is
    (left or right digit) is the whole point.
    """

    def __init__(self, in_channels: int, input_size: tuple[int, int], channels=(32, 64, 128),
                 out_dim: int = 256, dropout: float = 0.0):
        super().__init__()
        channels = check_widths("backbone.image.channels", channels)  # [] would build an encoder of no stage
        check_range("backbone.image.out_dim", out_dim, 1)
        stages, c_in = [], in_channels
        for i, c_out in enumerate(channels):
            block = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if i > 0:
                block.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*block))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.in_channels = in_channels
        self.stage_channels = tuple(int(c) for c in channels)
        with torch.no_grad():  # in eval mode, so the dry run leaves the BatchNorm statistics alone
            x = torch.zeros(1, in_channels, *input_size)
            for stage in self.stages.eval():
                x = stage(x)
            self.stages.train()
        self.project = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(x.numel(), out_dim),
                                     nn.ReLU(inplace=True))
        self.out_dim = out_dim


_RESNETS = {18: "resnet18", 34: "resnet34", 50: "resnet50"}


def _pretrained_state(depth: int) -> dict:
    """torchvision's ImageNet weights from the local torch cache; never downloads."""
    import torchvision

    weights = torchvision.models.get_model_weights(_RESNETS[depth]).IMAGENET1K_V1
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise UsageError(
            f"backbone.image.pretrained=true: the torchvision weights for resnet{depth} are not in the local torch "
            f"cache. mtlrun never downloads at run time; fetch {weights.url} and put it at {path} "
            f"(or point TORCH_HOME at a cache that has it), or set backbone.image.pretrained=false")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated download, wrong file
        raise UsageError(f"backbone.image.pretrained=true: cannot read {path}: {exc}") from exc


class ResNet(StagedEncoder):
    """torchvision ResNet-18/34/50 without its classifier, as five stages: stem, layer1 .. layer4.

    `small_input` (default: inputs under 64 px) swaps the 7x7/stride-2 stem and max-pool for a 3x3/stride-1
    stem, as is usual for CIFAR-sized images; otherwise a 16 px image would shrink to nothing. With
    `pretrained`, a 1-channel input gets the RGB stem filters summed, the usual way to reuse them.
    `project` is global average pooling (then a Linear+ReLU to `out_dim` if given), as in torchvision.
    Inside a stage the torchvision names are kept: `stages.0.conv1` is `conv1`, `stages.1` is `layer1`.
    """

    def __init__(self, in_channels: int, input_size: tuple[int, int], depth: int = 18,
                 pretrained: bool = False, small_input: bool | None = None, out_dim: int | None = None):
        super().__init__()
        import torchvision

        if depth not in _RESNETS:
            raise UsageError(f"backbone.image.depth={depth} is not available; valid: {', '.join(map(str, _RESNETS))}")
        net = torchvision.models.get_model(_RESNETS[depth], weights=None)
        if pretrained:
            net.load_state_dict(_pretrained_state(depth))
        if small_input is None:
            small_input = min(input_size) < 64
        if small_input:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            stem = net.conv1.weight.data
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            if pretrained:
                net.conv1.weight.data.copy_(stem.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
                                            / in_channels)
        stem = nn.Sequential(OrderedDict(conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool))
        layers = [net.layer1, net.layer2, net.layer3, net.layer4]
        self.stages = nn.ModuleList([stem, *layers])
        self.in_channels = in_channels
        self.stage_channels = (64, *(_out_channels(layer) for layer in layers))
        features = net.fc.in_features
        pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if out_dim is None:
            self.project = nn.Sequential(*pool)
        else:
            self.project = nn.Sequential(*pool, nn.Linear(features, out_dim), nn.ReLU(inplace=True))
        self.out_dim = features if out_dim is None else out_dim


def _out_channels(layer: nn.Sequential) -> int:
    block = layer[-1]
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2  # Bottleneck / BasicBlock
    return last_bn.num_features
