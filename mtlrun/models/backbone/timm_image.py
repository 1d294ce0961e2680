"""Any timm model as an image backbone (`backbone/image=timm`, `backbone/image=timm_dense`; pip install
"mtlrun[timm]").

timm's features-only mode (`timm.create_model(name, features_only=True, in_chans=C)`) gives the feature maps
the stage API needs: for the many timm models whose feature extractor runs its modules in sequence (ResNets,
ResNeXts, ConvNeXt, CSPNets, RegNets, ...), the modules up to each returned feature map become one stage,
so every `arch` (cross-stitch, MTAN, MMoE, PLE) takes the model apart like the built-in ResNet. A model
whose features are collected by hooks or its own forward (EfficientNet, ViT, Swin) becomes one stage that
returns its last feature map: hps, soft and the fusions work, the stage-wise archs that need two stages say so.
`in_chans` adapts the stem to the data's channels (timm sums / repeats pretrained RGB filters).

Weights (pretrained=true) come only from the local disk, never the network: `checkpoint_path` if given,
else the Hugging Face hub cache (mtlrun.hub) for the model's `hf_hub_id`, else torch's hub
cache for its legacy URL. Without them: a UsageError naming the model, the folders looked in and the option
that takes a file.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from mtlrun.checks import check_range, check_widths, import_extra
from mtlrun.errors import UsageError
from mtlrun.models.backbone.base import StagedEncoder
from mtlrun.models.backbone.dense import DenseEncoder
from mtlrun.hub import cached_file, offline, repo_cache_dir

_KEY = "backbone.image"
_FEATURE = "backbone/image=timm"


class _LastFeature(nn.Module):
    """A feature extractor as one stage: its last feature map, channels first."""

    def __init__(self, net: nn.Module, channels_last: bool):
        super().__init__()
        self.net, self.channels_last = net, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        last = out[-1] if isinstance(out, (list, tuple)) else list(out.values())[-1]
        return last.permute(0, 3, 1, 2) if self.channels_last else last


def _sequential_stages(net: nn.Module) -> list[nn.Module] | None:
    """The modules of a sequential timm feature extractor (FeatureDictNet / FeatureListNet), cut after each
    returned feature map; None for the other kinds."""
    return_layers = getattr(net, "return_layers", None)
    if not isinstance(net, nn.ModuleDict) or not return_layers:
        return None
    stages, current = [], OrderedDict()
    for name, module in net.items():
        current[name] = module
        if name in return_layers:
            stages.append(nn.Sequential(current))
            current = OrderedDict()
    return stages


def _weights_file(timm, name: str, checkpoint_path) -> Path:
    """The local file that holds `name`'s pretrained weights, or a UsageError that says where to put them."""
    if checkpoint_path is not None:
        path = Path(str(checkpoint_path)).expanduser()
        if not path.is_file():
            raise UsageError(f"{_KEY}.checkpoint_path={checkpoint_path}: no such file (a timm state dict: "
                             f".safetensors, .pth or .bin)")
        return path
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    url = getattr(cfg, "url", None)
    looked = []
    if hub_id:
        filename = getattr(cfg, "hf_hub_filename", None)
        found = cached_file(hub_id, (filename,) if filename else ("model.safetensors", "pytorch_model.bin"))
        if found:
            return found
        looked.append(f"{repo_cache_dir(hub_id)} (the Hugging Face hub cache: HF_HUB_CACHE, or HF_HOME/hub)")
    if url:
        legacy = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if legacy.is_file():
            return legacy
        looked.append(f"{legacy} (torch's hub cache: TORCH_HOME)")
    if not looked:
        raise UsageError(f"{_KEY}.pretrained=true: timm lists no pretrained weights for {name}; give a file with "
                         f"{_KEY}.checkpoint_path=/path/to/weights.safetensors or set {_KEY}.pretrained=false")
    fetch = f"`huggingface-cli download {hub_id}`" if hub_id else f"{url}"
    raise UsageError(f"{_KEY}.pretrained=true: the weights of the timm model {name} are not in the local cache, and "
                     f"mtlrun never downloads. Looked in: {'; '.join(looked)}. Fetch them where there is a network "
                     f"({fetch}) and copy the cache here, or give the file: {_KEY}.checkpoint_path="
                     f"/path/to/weights.safetensors; or set {_KEY}.pretrained=false")


def create_features(name: str, in_channels: int, input_size, pretrained: bool, checkpoint_path,
                    out_indices) -> nn.Module:
    """timm.create_model(name, features_only=True, ...) with the options checked and weights from disk only."""
    timm = import_extra("timm", "timm", _FEATURE)
    if not isinstance(name, str) or not name:
        raise UsageError(f"{_KEY}.name={name!r}: give a timm model name, e.g. resnet18 (timm.list_models())")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise UsageError(f"{_KEY}.name={name}: timm has no such model"
                         + (f"; close: {', '.join(close)}" if close else "") + " (timm.list_models() lists them)")
    if not isinstance(pretrained, bool):
        raise UsageError(f"{_KEY}.pretrained={pretrained}: must be true or false")
    if checkpoint_path is not None and not pretrained:
        raise UsageError(f"{_KEY}.checkpoint_path={checkpoint_path} is only read with {_KEY}.pretrained=true")
    kwargs = {"features_only": True, "in_chans": in_channels}
    if getattr(timm.models.get_pretrained_cfg(name), "fixed_input_size", False):  # ViT-style position tables
        kwargs["img_size"] = tuple(int(s) for s in input_size)
    if out_indices is not None:
        try:
            kwargs["out_indices"] = tuple(int(i) for i in out_indices)
        except (TypeError, ValueError):
            raise UsageError(f"{_KEY}.out_indices={out_indices}: a list of feature indices, e.g. [1, 2, 3, 4], "
                             f"or null for all") from None
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    path = _weights_file(timm, name, checkpoint_path)
    try:
        with offline():
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except Exception as exc:  # a truncated file, another model's weights
        raise UsageError(f"{_KEY}.pretrained=true: cannot load {path} into the timm model {name}: {exc}") from exc


class TimmImage(StagedEncoder):
    """A timm model's feature extractor as stages; `project` pools the last map (then Linear + ReLU to
    `out_dim` if given). `out_indices` (null: all of the model's feature maps) picks the stage boundaries."""

    def __init__(self, in_channels: int, input_size: tuple[int, int], name: str = "resnet18",
                 pretrained: bool = False, checkpoint_path: str | None = None, out_indices=None,
                 out_dim: int | None = None):
        super().__init__()
        net = create_features(name, in_channels, input_size, pretrained, checkpoint_path, out_indices)
        channels = tuple(int(c) for c in net.feature_info.channels())
        stages = _sequential_stages(net)
        channels_last = getattr(net, "output_fmt", "NCHW") == "NHWC"
        if stages is None or channels_last or not _runs(stages, in_channels, input_size, channels):
            stages, channels = [_LastFeature(net, channels_last)], channels[-1:]
            if not _runs(stages, in_channels, input_size, channels):
                raise UsageError(f"{_KEY}.name={name}: the timm model's last feature map is not a [B, C, H, W] map "
                                 f"of {channels[0]} channels; pick another model")
        self.name = name
        self.stages = nn.ModuleList(stages)
        self.in_channels = in_channels
        self.stage_channels = channels
        pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if out_dim is None:
            self.project = nn.Sequential(*pool)
        else:
            self.project = nn.Sequential(*pool, nn.Linear(channels[-1], out_dim), nn.ReLU(inplace=True))
        self.out_dim = channels[-1] if out_dim is None else int(out_dim)


def _runs(stages: list[nn.Module], in_channels: int, input_size, channels: tuple[int, ...]) -> bool:
    """Whether the stages, run in sequence on an `input_size` image, give 4-D maps of `channels` (a dry run in
    eval mode, so no BatchNorm statistic moves); a too-small image is a UsageError."""
    x = torch.zeros(1, in_channels, *input_size)
    with torch.no_grad():
        for stage, c in zip(stages, channels):
            was_training = stage.training
            try:
                x = stage.eval()(x)
            except RuntimeError as exc:
                raise UsageError(f"{_KEY}: the timm model cannot read a {input_size[0]}x{input_size[1]} image "
                                 f"({exc}); pick fewer stages ({_KEY}.out_indices) or larger images") from exc
            finally:
                stage.train(was_training)
            if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != c:
                return False
    return True


class TimmDense(DenseEncoder):
    """A timm model's stages (as `TimmImage`) + the light decoder of mtlrun.models.backbone.dense, for dense
    tasks: one decoder stage per `decoder_channels` entry, the last at the input size (`ResNetDense` explains
    the sizes). Needs a model with sequential stages (most CNNs)."""

    def __init__(self, in_channels: int, input_size: tuple[int, int], name: str = "resnet18",
                 pretrained: bool = False, checkpoint_path: str | None = None, out_indices=None,
                 decoder_channels=(128, 64, 32), convs: int = 1, upsample: str = "bilinear"):
        super().__init__()
        decoder_channels = check_widths(f"{_KEY}.decoder_channels", decoder_channels, "[128, 64, 32]")
        convs = check_range(f"{_KEY}.convs", convs, 1)
        encoder = TimmImage(in_channels, input_size, name, pretrained, checkpoint_path, out_indices)
        if isinstance(encoder.stages[0], _LastFeature):
            raise UsageError(f"{_KEY}.name={name}: backbone/image=timm_dense needs a timm model whose features come "
                             f"stage by stage (e.g. resnet18, convnext_atto, regnetx_002)")
        self.name = name
        self._add_decoder(list(encoder.stages), encoder.stage_channels, decoder_channels, convs, upsample,
                          in_channels, input_size)
