"""Image encoders: a small CNN for CPU-sized inputs and torchvision ResNets.

Each maps [B, C, H, W] to a feature vector [B, out_dim].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mtlrun.errors import UsageError


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks, each halving the resolution after the first, then a linear projection.

    The last feature map is flattened rather than globally pooled: on multidigits *where* a stroke is
    (left or right digit) is the whole point.
    """

    def __init__(self, in_channels: int, input_size: tuple[int, int], channels=(32, 64, 128),
                 out_dim: int = 256, dropout: float = 0.0):
        super().__init__()
        layers, c_in = [], in_channels
        for i, c_out in enumerate(channels):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, *input_size)).numel()
        self.project = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, out_dim),
                                     nn.ReLU(inplace=True))
        self.out_dim = out_dim

    def forward(self, x):
        return self.project(self.features(x))


_RESNETS = {18: "resnet18", 34: "resnet34", 50: "resnet50"}


def _pretrained_state(depth: int) -> dict:
    """torchvision's ImageNet weights from the local torch cache; never downloads."""
    import torchvision

    weights = torchvision.models.get_model_weights(_RESNETS[depth]).IMAGENET1K_V1
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise UsageError(
            f"backbone.pretrained=true: the torchvision weights for resnet{depth} are not in the local torch "
            f"cache. mtlrun never downloads at run time; fetch {weights.url} and put it at {path} "
            f"(or point TORCH_HOME at a cache that has it), or set backbone.pretrained=false")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated download, wrong file
        raise UsageError(f"backbone.pretrained=true: cannot read {path}: {exc}") from exc


class ResNet(nn.Module):
    """torchvision ResNet-18/34/50 without its classifier.

    `small_input` (default: inputs under 64 px) swaps the 7x7/stride-2 stem and max-pool for a 3x3/stride-1
    stem, as is usual for CIFAR-sized images; otherwise a 16 px image would shrink to nothing. With
    `pretrained`, a 1-channel input gets the RGB stem filters summed, the usual way to reuse them.
    """

    def __init__(self, in_channels: int, input_size: tuple[int, int], depth: int = 18,
                 pretrained: bool = False, small_input: bool | None = None, out_dim: int | None = None):
        super().__init__()
        import torchvision

        if depth not in _RESNETS:
            raise UsageError(f"backbone.depth={depth} is not available; valid: {', '.join(map(str, _RESNETS))}")
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
        features = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self.project = nn.Identity() if out_dim is None else nn.Sequential(nn.Linear(features, out_dim),
                                                                           nn.ReLU(inplace=True))
        self.out_dim = features if out_dim is None else out_dim

    def forward(self, x):
        return self.project(self.net(x))
