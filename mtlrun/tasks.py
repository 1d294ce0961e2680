"""Task types: each knows its head size, its loss, its metrics and which direction is better.

Losses leave out samples whose label is missing (`label_mask` False) and are mean-reduced over the
labelled ones; a batch with no labels for a task gives a loss of exactly zero (and so no gradient).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mtlrun.checks import check_range, is_number
from mtlrun.data.base import TargetInfo
from mtlrun.detection import DetectionMetrics, decode, fcos_loss
from mtlrun.errors import UsageError
from mtlrun.metrics import (
    ClassificationMetrics,
    DepthMetrics,
    Metrics,
    MultilabelMetrics,
    NormalsMetrics,
    RegressionMetrics,
    SegmentationMetrics,
)
from mtlrun.crf import negative_log_likelihood, viterbi
from mtlrun.sequence_metrics import SCHEMES, TaggingMetrics, detect_scheme


def fill_unlabelled(target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Replace the targets of unlabelled samples by 0: a NaN placeholder times a zero mask is still NaN."""
    if mask is None:
        return target
    return torch.where(mask.view(-1, *[1] * (target.dim() - 1)), target, torch.zeros_like(target))


def masked_mean(per_sample: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_sample.mean()
    per_sample = per_sample.view(len(per_sample), -1).mean(dim=1)
    mask = mask.to(per_sample.dtype)
    return (per_sample * mask).sum() / mask.sum().clamp_min(1)


class Task:
    kind = ""
    dense = False  # True: the prediction is a map [B, output_dim, H, W] at the input image's resolution
    token_level = False  # True: one prediction per token [B, L, output_dim] (mtlrun.tasks.Tagging)

    def __init__(self, weight: float = 1.0, auxiliary: bool = False):
        self.weight = float(weight)
        self.auxiliary = bool(auxiliary)
        self.name = ""  # set by the builder from the config key

    output_dim: int

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self) -> Metrics:
        raise NotImplementedError

    @property
    def metric_names(self) -> tuple[str, ...]:
        return self.metrics().names

    @property
    def higher_is_better(self) -> dict[str, bool]:
        return self.metrics().higher_is_better

    def check(self, info: TargetInfo) -> list[str]:
        """Problems between this task's definition and what the data provides (config keys in the text)."""
        if info.kind != self.kind:
            return [f"tasks.{self.name}: is a {self.kind} task but the data's target '{self.name}' is "
                    f"{info.kind}; use a task _target_ for {info.kind}"]
        return []


class Classification(Task):
    kind = "classification"

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, **kw):
        super().__init__(**kw)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.output_dim = self.num_classes

    def loss(self, pred, target, mask):
        if mask is None:
            return F.cross_entropy(pred.float(), target, label_smoothing=self.label_smoothing)
        target = fill_unlabelled(target, mask)  # any valid class; the sample is masked out below
        per_sample = F.cross_entropy(pred.float(), target, reduction="none",
                                     label_smoothing=self.label_smoothing)
        return masked_mean(per_sample, mask)

    def metrics(self):
        return ClassificationMetrics(self.num_classes)

    def check(self, info):
        problems = super().check(info)
        return problems or _class_count_problems(self, info)


class Multilabel(Task):
    """Independent yes/no labels with BCE; `Binary` is the one-label case with a [B] target."""

    kind = "multilabel"

    def __init__(self, num_labels: int, pos_weight: float | None = None, **kw):
        super().__init__(**kw)
        self.num_labels = int(num_labels)
        self.pos_weight = pos_weight
        self.output_dim = self.num_labels

    def loss(self, pred, target, mask):
        target = fill_unlabelled(target, mask).float().view_as(pred)  # fp32 even under autocast
        pos_weight = None if self.pos_weight is None else torch.tensor(float(self.pos_weight), device=pred.device)
        per_elem = F.binary_cross_entropy_with_logits(pred.float(), target, reduction="none",
                                                      pos_weight=pos_weight)
        return masked_mean(per_elem, mask)

    def metrics(self):
        return MultilabelMetrics(self.num_labels)

    def check(self, info):
        problems = super().check(info)
        if not problems and self.kind == "multilabel" and info.dim != self.num_labels:
            problems.append(f"tasks.{self.name}.num_labels={self.num_labels} but the data has {info.dim} "
                            f"labels for '{self.name}'")
        return problems


class Binary(Multilabel):
    kind = "binary"

    def __init__(self, pos_weight: float | None = None, **kw):
        super().__init__(num_labels=1, pos_weight=pos_weight, **kw)


class Regression(Task):
    kind = "regression"
    LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}

    def __init__(self, dim: int = 1, loss: str = "mse", **kw):
        super().__init__(**kw)
        if loss not in self.LOSSES:
            raise UsageError(f"loss={loss!r} is not a regression loss; valid: {', '.join(self.LOSSES)}")
        self.dim = int(dim)
        self.loss_name = loss
        self.output_dim = self.dim

    def loss(self, pred, target, mask):
        target = fill_unlabelled(target, mask).float().view_as(pred)
        per_elem = self.LOSSES[self.loss_name](pred.float(), target, reduction="none")
        return masked_mean(per_elem, mask)

    def metrics(self):
        return RegressionMetrics(self.dim)

    def check(self, info):
        problems = super().check(info)
        if not problems and info.dim is not None and info.dim != self.dim:
            problems.append(f"tasks.{self.name}.dim={self.dim} but the data's target '{self.name}' has "
                            f"{info.dim} values per sample")
        return problems


# ----------------------------------------------------------------------------- dense (per-pixel) tasks
# Prediction [B, output_dim, H, W] at the input image's resolution. Which pixels count is read from the
# target (the layouts are those of mtlrun.data.scenes and mtlrun.data.nyuv2):
#   segmentation: long [B, H, W], class ids 0..C-1, `ignore_index` (-1) = no label at that pixel
#   depth:        float [B, 1, H, W], valid where > 0 (0 = no measurement)
#   normals:      float [B, 3, H, W] unit vectors, valid where the norm is > 0
# and from `label_mask` [B] (whole samples without a label). Each loss is the mean over the valid pixels of
# the labelled samples of the batch, pooled (a sample weighs by its number of valid pixels, as in MTAN and
# LibMTL); a batch with no valid pixel gives exactly 0 (no NaN, zero gradient). Losses are computed in
# float32, also under bf16/fp16 autocast.


def _valid_pixels(valid: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return valid if mask is None else valid & mask.view(-1, *[1] * (valid.dim() - 1))


def _pixel_mean(per_pixel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of `per_pixel` over `valid` (same shape); 0 when nothing is valid. `where`, not a product, so
    an inf/NaN at an invalid pixel cannot leak in."""
    return torch.where(valid, per_pixel, 0.0).sum() / valid.sum().clamp_min(1)


class DenseTask(Task):
    dense = True

    def check(self, info):
        problems = super().check(info)
        if not problems and info.dim is not None and info.dim != self.output_dim:
            problems.append(f"tasks.{self.name}: a {self.kind} task predicts {self.output_dim} channel(s) per "
                            f"pixel but the data's target '{self.name}' has {info.dim}")
        return problems


class Segmentation(DenseTask):
    """Per-pixel classification: cross-entropy over the pixels whose target is not `ignore_index`;
    metrics mIoU and pixel accuracy (mtlrun.metrics.SegmentationMetrics). An `ignore_index` inside
    0..num_classes-1 is not a class: skipped, left out of mIoU (docs/metrics.md)."""

    kind = "segmentation"

    def __init__(self, num_classes: int, ignore_index: int = -1, **kw):
        super().__init__(**kw)
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.output_dim = self.num_classes

    def loss(self, pred, target, mask):
        valid = _valid_pixels(target != self.ignore_index, mask)
        target = torch.where(valid, target, 0)  # any class id: those pixels are dropped below
        per_pixel = F.cross_entropy(pred.float(), target.long(), reduction="none")
        return _pixel_mean(per_pixel, valid)

    def metrics(self):
        return SegmentationMetrics(self.num_classes, self.ignore_index)

    def check(self, info):
        problems = super().check(info)
        return problems or _class_count_problems(self, info)


class Depth(DenseTask):
    """Per-pixel depth: L1 over the valid pixels (target > 0); metrics abs_err and rel_err."""

    kind = "depth"
    output_dim = 1

    def loss(self, pred, target, mask):
        target = target.float()
        valid = _valid_pixels(target > 0, mask)  # a NaN placeholder compares False
        target = torch.where(valid, target, 0.0)  # before the subtraction: NaN would poison the gradient
        return _pixel_mean((pred.float().view_as(target) - target).abs(), valid)

    def metrics(self):
        return DepthMetrics()


class Normals(DenseTask):
    """Per-pixel surface normals: 1 - cosine similarity between the L2-normalised prediction and the
    target over the valid pixels (target norm > 0); metrics: angular errors (NormalsMetrics)."""

    kind = "normals"
    output_dim = 3

    def loss(self, pred, target, mask):
        target = target.float()
        valid = _valid_pixels(target.square().sum(1) > 0, mask)
        target = torch.where(valid.unsqueeze(1), target, 0.0)
        cos = (F.normalize(pred.float(), dim=1) * F.normalize(target, dim=1)).sum(1)
        return _pixel_mean(1 - cos, valid)

    def metrics(self):
        return NormalsMetrics()


class Detection(Task):
    """Object detection: FCOS (Tian et al., ICCV 2019) on the shared feature map; the target and prediction
    layouts, the loss and the decoding are in mtlrun.detection. Metrics: COCO mAP@[.50:.95] (`map`),
    `map_50`, `map_75`, AR@100 (`mar_100`) and `map_<class>` per class (torchmetrics, `mtlrun[detection]`).

    `stride`: the head's grid step in input pixels (the shared map is average-pooled by it); `center_radius`:
    FCOS centre sampling, in strides; `score_threshold`, `nms_iou`, `max_detections`: the decoding at
    evaluation and prediction. `class_names` name the per-class metrics (default: the class ids)."""

    kind = "detection"
    spatial = True  # needs a feature map (mtlrun.models.heads); its prediction is a grid, not a pixel map

    def __init__(self, num_classes: int, class_names: list[str] | None = None, stride: int = 4,
                 center_radius: float = 1.5, score_threshold: float = 0.05, nms_iou: float = 0.6,
                 max_detections: int = 100, **kw):
        super().__init__(**kw)
        self.num_classes = check_range("num_classes", num_classes, 1)
        self.stride = check_range("stride", stride, 1)
        self.max_detections = check_range("max_detections", max_detections, 1)
        for key, value, low, high in (("center_radius", center_radius, 0.5, math.inf),
                                      ("score_threshold", score_threshold, 0.0, 1.0), ("nms_iou", nms_iou, 0.0, 1.0)):
            if not is_number(value) or not low <= value <= high:  # finite: NaN and inf fail here
                raise UsageError(f"{key}={value}: must be a number in [{low}, {high}]")
        names = [str(i) for i in range(self.num_classes)] if class_names is None else [str(n) for n in class_names]
        if len(names) != self.num_classes or len(set(names)) != len(names):
            raise UsageError(f"class_names={list(class_names)}: must be {self.num_classes} "
                             f"distinct names (num_classes), in class id order")
        self.class_names = names
        self.center_radius = float(center_radius)
        self.decode_args = {"stride": self.stride, "score_threshold": float(score_threshold),
                            "nms_iou": float(nms_iou), "max_detections": self.max_detections}
        self.output_dim = self.num_classes + 5  # class logits, 4 log distances, centre-ness

    def loss(self, pred, target, mask):
        return fcos_loss(pred, target, mask, self.num_classes, self.stride, self.center_radius)

    def metrics(self):
        return DetectionMetrics(self.num_classes, self.class_names, self.decode_args)

    def detections(self, pred: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The decoded boxes of each image of a raw prediction (evaluation, predict, pictures; not training)."""
        return decode(pred, self.num_classes, **self.decode_args)

    def check(self, info):
        problems = super().check(info)
        return problems or _class_count_problems(self, info)


def _class_count_problems(task: Task, info: TargetInfo) -> list[str]:
    """A classification-like task whose num_classes differs from the data's."""
    if info.num_classes == task.num_classes:
        return []
    return [f"tasks.{task.name}.num_classes={task.num_classes} but the data has {info.num_classes} classes "
            f"(labels 0..{info.num_classes - 1}) for '{task.name}'; set tasks.{task.name}.num_classes="
            f"{info.num_classes}"]


class Tagging(Task):
    """Sequence labelling: one tag per token (part of speech, chunks, named entities).

    Target: long [B, L] aligned with the text input's token ids, tag ids 0..num_tags-1 and `ignore_index`
    (-1) where a token has no tag (padding, a word's later sub-words); a sentence without tags for this
    task is `label_mask` False. Prediction: logits [B, L, num_tags] from a head on each token of the
    text encoder. Loss: cross-entropy over the tagged tokens of the labelled sentences, pooled over the
    batch (a sentence weighs by its number of tags); 0 when nothing is tagged. `crf: true`: a linear-chain CRF
    on top (mtlrun.crf): the prediction is the chain's potentials [B, L, num_tags, num_tags], the loss its
    negative log-likelihood per tagged token, decoding Viterbi's best path (at evaluation only). Metrics
    (mtlrun.sequence_metrics): token accuracy, and entity precision / recall / F1 as seqeval's default mode
    for a BIO or BIOES tag set, macro-F1 over the tags otherwise. The tag names come from the data.
    """

    kind = "tagging"
    token_level = True
    SCHEMES = ("auto", "bio", "bioes", "none")

    def __init__(self, num_tags: int, scheme: str = "auto", ignore_index: int = -1, crf: bool = False, **kw):
        super().__init__(**kw)
        from mtlrun.errors import UsageError

        if not isinstance(crf, bool):
            raise UsageError(f"crf={crf!r}: must be true or false")
        self.crf = crf
        if scheme not in self.SCHEMES:
            raise UsageError(f"scheme={scheme!r}: valid: {', '.join(self.SCHEMES)} (auto: bio or bioes when every "
                             f"tag is O or <prefix>-<TYPE> of that scheme, none otherwise: macro-F1 over the tags)")
        self.num_tags = self.num_classes = self.output_dim = int(num_tags)
        self.scheme_option, self.ignore_index = scheme, int(ignore_index)
        self.tags = [str(i) for i in range(self.num_tags)]  # the data's names, from `check`

    @property
    def scheme(self) -> str | None:
        if self.scheme_option == "none":
            return None
        return detect_scheme(self.tags) if self.scheme_option == "auto" else self.scheme_option

    def loss(self, pred, target, mask):
        valid = _valid_pixels(target != self.ignore_index, mask)
        if self.crf:  # the sentences' NLL, pooled per tagged token as the cross-entropy is
            nll = negative_log_likelihood(pred, torch.where(valid, target, self.ignore_index), self.ignore_index)
            return nll.sum() / valid.sum().clamp_min(1)
        target = torch.where(valid, target, 0).long()  # any tag id: those tokens are dropped below
        per_token = F.cross_entropy(pred.float().transpose(1, 2), target, reduction="none")
        return _pixel_mean(per_token, valid)

    def decode(self, pred: torch.Tensor) -> torch.Tensor:
        """long [B, L]: the predicted tag of each token (Viterbi's best path with a CRF, else the argmax)."""
        return viterbi(pred) if self.crf else pred.argmax(dim=-1)

    def metrics(self):
        return TaggingMetrics(self.tags, self.ignore_index, self.scheme, decode=self.decode)

    def check(self, info):
        problems = super().check(info)
        if problems:
            return problems
        if info.num_classes != self.num_tags:
            return [f"tasks.{self.name}.num_tags={self.num_tags} but the data has {info.num_classes} tags for "
                    f"'{self.name}'; set tasks.{self.name}.num_tags={info.num_classes}"]
        if info.labels:
            self.tags = list(info.labels)  # their names: the metrics read entities from them
        if self.scheme_option in SCHEMES:
            bad = [t for t in self.tags if t != "O" and not (len(t) > 2 and t[1] == "-" and t[0] in
                                                               SCHEMES[self.scheme_option])]
            if bad:
                problems.append(f"tasks.{self.name}.scheme={self.scheme_option}: the tags {bad[:5]} are not O nor "
                                f"<{'|'.join(SCHEMES[self.scheme_option])}>-<TYPE>; use scheme=auto or none")
        return problems
