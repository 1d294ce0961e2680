"""detections.png: true boxes dashed, predicted boxes solid with class and score, low scores left out."""

from __future__ import annotations

import torch
from matplotlib.patches import Rectangle

from mtlrun.engine.detection_plots import build_detections_figure


def test_true_boxes_are_dashed_and_confident_predictions_solid_with_their_label():
    truths = [torch.tensor([[2.0, 3.0, 10.0, 12.0, 1.0], [0, 0, 0, 0, -1]]), torch.full((2, 5), -1.0)]
    found = [{"boxes": torch.tensor([[2.0, 3.0, 9.0, 12.0], [0.0, 0.0, 4.0, 4.0]]), "scores": torch.tensor([0.9, 0.1]),
              "labels": torch.tensor([1, 0])},
             {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}]
    fig = build_detections_figure([torch.rand(3, 16, 16), torch.rand(1, 16, 16)], truths, found, ["cat", "dog"],
                                  "test")
    first, second = fig.axes[:2]
    boxes = [p for p in first.patches if isinstance(p, Rectangle)]
    assert [(p.get_linestyle(), p.get_width(), p.get_height()) for p in boxes] == [("--", 8.0, 9.0), ("solid", 7.0, 9.0)]
    assert [t.get_text() for t in first.texts] == ["dog 0.90"]  # the 0.1 box is below min_score
    assert not second.patches and not second.texts  # a background image with nothing found
