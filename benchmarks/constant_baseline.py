"""The best input-independent predictors of a config's tasks, measured like a trained model.

A trained model should beat what can be predicted without looking at the input. For each task this
fits two constant predictors on the train split and scores them on a split with mtlrun's own evaluation
(mtlrun.engine.evaluate.evaluate_split: the same losses and metrics as `mtlrun eval`):
  * global: one prediction for every sample and pixel: the most frequent class (classification,
    segmentation), the per-label rate (binary, multilabel), the median (depth: L1-optimal) or mean
    (regression) target, the normalised mean normal (normals);
  * per_pixel (dense tasks only): the same statistic at every pixel position separately, i.e. the layout
    prior of the data (floor at the bottom, wall at the top) and the stronger of the two;
  * detection (both kinds): the train split's mean box of every class, one per class and image at a fixed
    score (0.5), as the raw head output that decodes to exactly those boxes.
Labels that are masked or invalid (ignore_index, depth 0, zero normals) are left out of every statistic.

Run:  python benchmarks/constant_baseline.py experiment=scenes_hps [--split test] [more overrides]
"""

from __future__ import annotations

import argparse
import json

import torch
from hydra import compose, initialize_config_dir
from torch import nn

from mtlrun.build import build_components
from mtlrun.config import config_dir
from mtlrun.engine.evaluate import evaluate_split
from mtlrun.detection import grid_points
from mtlrun.tasks import Binary, Classification, Depth, Detection, Multilabel, Normals, Regression, Segmentation


class ConstantModel(nn.Module):
    """Returns the same prediction for every sample (a per-task tensor broadcast over the batch)."""

    def __init__(self, predictions: dict[str, torch.Tensor]):
        super().__init__()
        self.predictions = predictions

    def forward(self, inputs, modality_mask=None):
        batch = len(next(iter(inputs.values())))
        return {t: p.expand(batch, *p.shape) for t, p in self.predictions.items()}


def mean_boxes(task: Detection, targets: torch.Tensor, image_size) -> torch.Tensor:
    """Raw head output [C + 5, h, w] decoding to each class's mean train box (score 0.5, nothing else): the
    box sits at the free grid location nearest its centre, the distances from there to its sides."""
    h, w = image_size[0] // task.stride, image_size[1] // task.stride
    out = torch.full((task.num_classes + 5, h * w), -30.0)
    out[task.num_classes + 4] = 0.0  # centre-ness 0.5; with a class probability of 0.5: score sqrt(0.25)
    points, taken = grid_points(h, w, task.stride, "cpu"), set()
    rows = targets.reshape(-1, 5)
    for c in range(task.num_classes):
        boxes = rows[rows[:, 4] == c, :4]
        if not len(boxes):
            continue
        box = boxes.mean(0)
        centre = (box[:2] + box[2:]) / 2
        order = (points - centre).norm(dim=1).argsort().tolist()
        loc = next(i for i in order if i not in taken)
        taken.add(loc)
        distances = torch.cat([points[loc] - box[:2], box[2:] - points[loc]]).clamp_min(1e-3) / task.stride
        out[c, loc] = 0.0
        out[task.num_classes:task.num_classes + 4, loc] = distances.log()
    return out.view(-1, h, w)


def fit(task, targets: torch.Tensor, mask: torch.Tensor | None, per_pixel: bool, image_size=None) -> torch.Tensor:
    """The constant prediction for `task` from its train targets (a tensor without the batch dimension)."""
    if mask is not None:
        targets = targets[mask]
    if isinstance(task, Detection):
        return mean_boxes(task, targets, image_size)
    if isinstance(task, Segmentation):
        c = task.num_classes
        valid = targets != task.ignore_index
        one_hot = torch.zeros(*targets.shape, c)
        one_hot[valid] = nn.functional.one_hot(targets[valid].long(), c).float()
        counts = one_hot.sum(0) if per_pixel else one_hot.sum(dim=(0, 1, 2)).expand(*targets.shape[1:], c)
        return torch.log(counts + 1e-3).permute(2, 0, 1)  # logits [C, H, W]: argmax = most frequent class
    if isinstance(task, Depth):
        valid = targets > 0
        if per_pixel:
            filled = torch.where(valid, targets, torch.nan)
            return filled.nanmedian(dim=0).values.nan_to_num(targets[valid].median().item())
        return targets[valid].median().expand(targets.shape[1:])
    if isinstance(task, Normals):
        valid = (targets.norm(dim=1, keepdim=True) > 0).float()
        total = (targets * valid).sum(0) if per_pixel else (targets * valid).sum(dim=(0, 2, 3))[:, None, None]
        mean = total.expand(targets.shape[1:])
        return mean / mean.norm(dim=0, keepdim=True).clamp_min(1e-6)
    if isinstance(task, Classification):
        counts = torch.bincount(targets.long(), minlength=task.num_classes).float()
        return torch.log(counts + 1e-3)
    if isinstance(task, (Binary, Multilabel)):
        rate = targets.float().mean(0).clamp(1e-4, 1 - 1e-4)
        return torch.log(rate / (1 - rate))  # logits
    if isinstance(task, Regression):
        return targets.float().mean(0)
    raise SystemExit(f"no constant predictor for {type(task).__name__} (task {task.name})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="mtlrun train overrides, e.g. experiment=scenes_hps")
    p.add_argument("--split", default="test", help="split to score (default test)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args()

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose(config_name="train", overrides=args.overrides)
    parts = build_components(cfg)
    train = parts.data.dataset("train")
    whole = train.__getitems__(list(range(len(train))))  # read once: the targets of every task
    labelled = whole.get("label_mask", {})
    results = {}
    image_size = next((m.shape[-2:] for m in parts.data.spec.modalities.values() if m.kind == "image"), None)
    for kind in ("global", "per_pixel"):
        if kind == "per_pixel" and not any(task.dense for task in parts.tasks.values()):
            continue
        predictions = {t: fit(task, whole["targets"][t], labelled.get(t), per_pixel=kind == "per_pixel" and task.dense,
                              image_size=image_size)
                       for t, task in parts.tasks.items()}
        cpu = torch.device("cpu")
        results[kind] = evaluate_split(ConstantModel(predictions), parts.tasks,
                                       parts.data.eval_loader(args.split, device=cpu), device=cpu)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    kinds = list(results)
    print(f"constant predictors fitted on train, scored on {args.split} ({' '.join(args.overrides)})")
    print(f"{'metric':<34}" + "".join(f"{k:>12}" for k in kinds))
    for name in results["global"]:
        print(f"{name:<34}" + "".join(f"{results[k][name]:>12.4f}" for k in kinds))


if __name__ == "__main__":
    main()
