"""detections.png: a few test images with the true boxes (dashed) and the predicted ones (solid, with class and
score), written after training for every detection task, as users of detection tools expect to see.

`build_detections_figure` returns the Figure (tests read its patches and texts), `plot_detections` runs the
model on the first test images and saves it. Predictions below `min_score` are not drawn (the metrics count
them all)."""

from __future__ import annotations

import os

import torch

from mtlrun.data.loading import to_device
from mtlrun.engine.plots import panel_grid, pyplot, save_figure

COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def _displayable(image: torch.Tensor):
    """[C, H, W] as an [H, W, 3] or [H, W] array in [0, 1]: min-max per image (normalised inputs are not)."""
    image = image.detach().float().cpu()
    low, high = image.min(), image.max()
    image = (image - low) / (high - low).clamp_min(1e-8)
    return image[0].numpy() if image.shape[0] == 1 else image[:3].permute(1, 2, 0).numpy()


def build_detections_figure(images: list[torch.Tensor], truths: list[torch.Tensor], found: list[dict],
                            class_names: list[str], title: str, min_score: float = 0.3):
    """One panel per image: `truths` [M, 5] rows (padding class -1), `found` the decoded detections."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    fig, axes = panel_grid(plt, len(images), width=3.0, height=3.0, cols=min(3, len(images)))
    for ax, image, truth, det in zip(axes, images, truths, found):
        ax.imshow(_displayable(image), cmap="gray", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for x1, y1, x2, y2, c in truth.tolist():
            if c >= 0:
                ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, linestyle="--",
                                       linewidth=1.2, edgecolor=COLOURS[int(c) % len(COLOURS)]))
        for (x1, y1, x2, y2), score, c in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
            if score < min_score:
                continue
            colour = COLOURS[c % len(COLOURS)]
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, linewidth=1.5, edgecolor=colour))
            ax.text(x1 - 0.5, y1 - 0.5, f"{class_names[c]} {score:.2f}", fontsize=6, color="white", va="bottom",
                    bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.5, "alpha": 0.8})
    fig.suptitle(f"{title}: true (dashed) and predicted (solid, score >= {min_score}) boxes", fontsize=8)
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_detections(model, task, data, device: torch.device, path: str | os.PathLike, count: int = 6) -> bool:
    """detections.png of the first `count` test images for detection `task`; False (nothing written) when the
    test split has no image input or no sample."""
    spec = data.spec
    image_inputs = [m for m, info in spec.modalities.items() if info.kind == "image"]
    dataset = data.dataset("test")
    if not image_inputs or len(dataset) == 0:
        return False
    batch = dataset.__getitems__(list(range(min(count, len(dataset)))))
    was_training = model.training
    model.eval()
    try:
        raw = model(to_device(batch["inputs"], device), modality_mask=to_device(batch.get("modality_mask"), device))
    finally:
        model.train(was_training)
    found = [{k: v.cpu() for k, v in d.items()} for d in task.detections(raw[task.name].float())]
    mask = batch.get("label_mask", {}).get(task.name)
    truths = [t if mask is None or mask[i] else t[:0] for i, t in enumerate(batch["targets"][task.name])]
    images = list(batch["inputs"][image_inputs[0]])
    save_figure(build_detections_figure(images, truths, found, task.class_names, f"test split, task {task.name}"),
                path)
    return True
