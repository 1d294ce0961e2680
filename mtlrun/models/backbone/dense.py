"""Encoder-decoder image backbones for dense (per-pixel) tasks: segmentation, depth, surface normals.

A dense encoder is a `StagedEncoder` whose `stages` are the encoder stages (down to a coarse map)
followed by the decoder stages (each: resize up, then conv-BN-ReLU blocks), so its LAST stage outputs a
feature map [B, out_dim, H, W] at the resolution of the input image (`input_size`). `project` is the
identity: the map is the output, and `forward(x)` returns it (not a vector, unlike the other encoders).
Because decoder stages are ordinary stages, every stage-wise `arch` applies unchanged: MTAN attends to
encoder and decoder stages (as in the MTAN paper's SegNet), cross-stitch mixes between all stages, MMoE /
PLE experts are copies of the later (decoder) stages. The heads read the class attribute `dense = True`:
a dense task gets a convolutional head on the map, a vector task a pooled one (mtlrun.models.heads).

The stages run strictly in sequence, so there are no skip connections from encoder to decoder (U-Net) and
no max-unpooling indices (the original SegNet): the stage API cannot carry a second tensor between
stages. Each decoder stage resizes to a size fixed at construction: the mirrored encoder resolutions, and
exactly `input_size` at the last stage, so odd sizes (50 x 70 pools to 25 x 35, then 12 x 17) come back
exactly. Inputs are expected at `input_size` (the data's image size): the output is always that size.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from mtlrun.errors import UsageError
from mtlrun.checks import check_range, check_widths
from mtlrun.models.backbone.base import Encoded, StagedEncoder
from mtlrun.models.backbone.image import ResNet

UPSAMPLE_MODES = ("bilinear", "nearest")


def conv_blocks(c_in: int, c_out: int, convs: int) -> list[nn.Module]:
    """`convs` times 3x3 conv-BN-ReLU, the first from c_in channels."""
    layers = []
    for i in range(convs):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True)]
    return layers


class Resize(nn.Module):
    """Resize a map to a fixed (H, W): the decoder's upsampling (a no-op when the map has that size)."""

    def __init__(self, size: tuple[int, int], mode: str):
        super().__init__()
        self.size, self.mode = (int(size[0]), int(size[1])), mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        if self.mode == "bilinear":
            return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=self.size, mode=self.mode)

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode}"


class DenseEncoder(StagedEncoder):
    """Base of the encoder-decoder backbones: encoder stages + decoder stages, the last at `input_size`.

    Subclasses build their encoder stages and call `_add_decoder`. `encode` (what attention fusions read)
    gives the globally pooled map as the vector and the map's cells as tokens.
    """

    dense = True  # the heads (mtlrun.models.heads.make_heads) read it

    def _add_decoder(self, encoder_stages: list[nn.Module], encoder_channels: tuple[int, ...],
                     decoder_channels: tuple[int, ...], convs: int, upsample: str, in_channels: int,
                     input_size: tuple[int, int]) -> None:
        if upsample not in UPSAMPLE_MODES:
            raise UsageError(f"backbone.image.upsample={upsample}: valid: {', '.join(UPSAMPLE_MODES)}")
        input_size = (int(input_size[0]), int(input_size[1]))
        sizes = _stage_sizes(encoder_stages, in_channels, input_size)
        decoder, c_in = [], encoder_channels[-1]
        for size, c_out in zip(decoder_sizes(sizes, input_size, len(decoder_channels)), decoder_channels):
            decoder.append(nn.Sequential(Resize(size, upsample), *conv_blocks(c_in, c_out, convs)))
            c_in = c_out
        self.stages = nn.ModuleList([*encoder_stages, *decoder])
        self.stage_channels = tuple(encoder_channels) + tuple(decoder_channels)
        self.in_channels = in_channels
        self.input_size = input_size
        self.project = nn.Identity()
        self.out_dim = self.stage_channels[-1]

    def encode(self, x: torch.Tensor) -> Encoded:
        features = self.features(x)
        return Encoded(features.mean(dim=(-2, -1)), features.flatten(2).transpose(1, 2), None)


def _stage_sizes(stages: list[nn.Module], in_channels: int, input_size: tuple[int, int]) -> list[tuple[int, int]]:
    """(H, W) after each stage for an `input_size` input: a dry run in eval mode (BatchNorm statistics stay)."""
    x, sizes = torch.zeros(1, in_channels, *input_size), []
    with torch.no_grad():
        for stage in stages:
            was_training = stage.training
            try:
                x = stage.eval()(x)
            except RuntimeError as exc:  # e.g. max-pooling a 1-pixel map
                raise UsageError(f"backbone.image: the encoder stages shrink a {input_size[0]}x{input_size[1]} "
                                 f"image to nothing after {len(sizes)} stage(s); use fewer stages "
                                 f"(backbone.image.channels) or larger images ({exc})") from exc
            stage.train(was_training)
            sizes.append((int(x.shape[-2]), int(x.shape[-1])))
    return sizes


def decoder_sizes(encoder_sizes: list[tuple[int, int]], input_size: tuple[int, int],
                  num_stages: int) -> list[tuple[int, int]]:
    """The size each of `num_stages` decoder stages resizes to, ending exactly at `input_size`.

    The candidates are the encoder's resolutions mirrored (coarse to fine, the bottleneck's left out),
    then `input_size`. With as many decoder stages as candidates each stage takes the next one; with more,
    the extra stages work at `input_size`; with fewer, the stages are spread over the candidates so that
    the jumps stay even and the finest steps are kept, e.g. a ResNet on 224 px (bottleneck 7 px, candidates
    14, 28, 56, 224) with 3 stages: 28, 56, 224; on 32 px (stride-1 stem, bottleneck 4 px): 8, 16, 32.
    """
    ladder = []
    for size in reversed(encoder_sizes[:-1]):
        if size not in (encoder_sizes[-1], input_size) and size not in ladder:
            ladder.append(size)
    ladder.append(input_size)
    if num_stages >= len(ladder):
        return ladder[:-1] + [input_size] * (num_stages - len(ladder) + 1)
    return [ladder[math.ceil((i + 1) * len(ladder) / num_stages) - 1] for i in range(num_stages)]


class SegNetLite(DenseEncoder):
    """A small SegNet-like encoder-decoder for CPU-sized images.

    Encoder: one stage per entry of `channels`, each `convs` x conv-BN-ReLU; every stage but the first
    starts with a 2x2 max-pool. Decoder, the mirror image: one stage per encoder stage but the last, each
    resizing (`upsample`: bilinear or nearest) to the size of the encoder stage it mirrors, then `convs` x
    conv-BN-ReLU to that stage's channels. channels=(32, 64, 128) gives five stages at full, 1/2, 1/4, 1/2
    and full resolution with 32, 64, 128, 64, 32 channels; `out_dim` is channels[0].
    Unlike SegNet, the decoder upsamples by interpolation, not with the encoder's max-pooling indices.
    """

    def __init__(self, in_channels: int, input_size: tuple[int, int], channels=(32, 64, 128), convs: int = 2,
                 upsample: str = "bilinear"):
        super().__init__()
        channels = check_widths("backbone.image.channels", channels, "[32, 64, 128]")
        convs = check_range("backbone.image.convs", convs, 1)
        stages, c_in = [], in_channels
        for i, c_out in enumerate(channels):
            stages.append(nn.Sequential(*([nn.MaxPool2d(2)] if i else []), *conv_blocks(c_in, c_out, convs)))
            c_in = c_out
        self._add_decoder(stages, channels, tuple(reversed(channels[:-1])), convs, upsample, in_channels,
                          input_size)


class ResNetDense(DenseEncoder):
    """torchvision ResNet-18/34/50 stages (stem, layer1 .. layer4, built by mtlrun.models.backbone.image.ResNet:
    same `depth`, `pretrained` and `small_input` options and state-dict names) + a light decoder.

    The decoder has one stage per entry of `decoder_channels`, each resizing up (`upsample`) then `convs` x
    conv-BN-ReLU; see `decoder_sizes` for the sizes. A small input (< 64 px: stride-1 stem) is downsampled
    8x, so the default three stages come back one octave each (e.g. 4 -> 8 -> 16 -> 32 px); a larger input
    is downsampled 32x: give five stages (e.g. [256, 128, 64, 32, 32]) to upsample one octave per stage
    (with three, 7 -> 28 -> 56 -> 224 px). `out_dim` is decoder_channels[-1].
    """

    def __init__(self, in_channels: int, input_size: tuple[int, int], depth: int = 18, pretrained: bool = False,
                 small_input: bool | None = None, decoder_channels=(128, 64, 32), convs: int = 1,
                 upsample: str = "bilinear"):
        super().__init__()
        decoder_channels = check_widths("backbone.image.decoder_channels", decoder_channels, "[128, 64, 32]")
        convs = check_range("backbone.image.convs", convs, 1)
        resnet = ResNet(in_channels, input_size, depth=depth, pretrained=pretrained, small_input=small_input)
        self._add_decoder(list(resnet.stages), resnet.stage_channels, decoder_channels, convs, upsample,
                          in_channels, input_size)
