"""Detection end to end through the CLI: a tiny `experiment=scenes_det` run (results.json has the COCO metrics),
`mtlrun predict` (boxes in predictions.jsonl and one CSV row per box), `mtlrun export` (raw head outputs equal
to PyTorch's), and a data=table detection column trained with tasks=from_data."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch
from contracts import read_csv, read_results, requires, run_cli
from PIL import Image

import mtlrun

pytestmark = [pytest.mark.e2e, requires("torchmetrics", "detection")]

TINY = ["experiment=scenes_det", "data.n_train=8", "data.n_val=4", "data.n_test=5", "data.image_size=16",
        "data.batch_size=4", "backbone.image.channels=[8,16]", "trainer.max_epochs=1", "trainer.device=cpu",
        "trainer.progress_bar=false"]
COCO = ("map", "map_50", "map_75", "mar_100", "map_sphere", "map_box", "map_cylinder")


@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("det")
    proc = run_cli("train", *TINY, f"hydra.run.dir={folder / 'train'}", cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder / "train"


def test_results_have_the_coco_metrics_of_val_and_test(det_run):
    results = read_results(det_run)
    for split in ("val", "test"):
        for metric in COCO:
            value = results[f"{split}/detection/{metric}"]
            assert value is None or 0.0 <= value <= 1.0
    assert {"test/segmentation/miou", "test/depth/abs_err"} <= set(results)
    assert (det_run / "detections.png").stat().st_size > 0  # the best checkpoint's boxes on test images


def test_predict_writes_the_boxes_per_image_and_per_box(det_run, tmp_path):
    best = det_run / "checkpoints" / "best.pt"
    out = tmp_path / "predicted"
    proc = run_cli("predict", f"checkpoint={best}", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    rows = read_csv(out / "predictions.csv")
    assert len(records) == len(rows) == 5
    loaded = mtlrun.load(best)
    with torch.no_grad():
        raw = loaded.model(loaded.data.dataset("test").__getitems__([0, 1, 2, 3, 4])["inputs"])["detection"]
    expected = loaded.tasks["detection"].detections(raw)
    per_box = read_csv(out / "boxes" / "detection.csv")
    assert len(per_box) == sum(len(e["boxes"]) for e in expected)
    for k, (record, row, want) in enumerate(zip(records, rows, expected)):
        boxes = record["detection"]["boxes"]
        assert int(row["detection/boxes"]) == len(boxes) == len(want["boxes"])
        assert all(b["label"] in ("sphere", "box", "cylinder") for b in boxes)
        np.testing.assert_allclose([b["box"] for b in boxes], want["boxes"].numpy().reshape(-1, 4), atol=1e-5)
        scores = [b["score"] for b in boxes]
        assert scores == sorted(scores, reverse=True)
        assert [float(r["score"]) for r in per_box if r["id"] == str(record["id"])] == pytest.approx(scores)


@pytest.mark.parametrize("fmt", ["weights", "pt2", "torchscript"])  # onnx: as pt2 (torch.export), 20 s
def test_export_gives_the_raw_head_outputs(det_run, tmp_path, fmt):
    out = tmp_path / fmt
    proc = run_cli("export", f"checkpoint={det_run / 'checkpoints' / 'best.pt'}", f"format={fmt}", f"output={out}",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = json.loads((out / "export.json").read_text())
    if fmt != "weights":
        assert meta["max_abs_diff"]["detection"] < 1e-4


def write_table(folder, rows=8, size=16):
    """8 images with one bright square each (a 'sq' box), every third image a background image."""
    (folder / "img").mkdir()
    lines = []
    for i in range(rows):
        image = np.zeros((size, size, 3), dtype=np.uint8)
        objects = []
        if i % 3:
            x, y = 2 + i % 5, 3 + i % 4
            image[y:y + 8, x:x + 8] = 255
            objects.append({"box": [x, y, x + 8, y + 8], "label": "sq"})
        Image.fromarray(image, "RGB").save(folder / f"img/{i}.png")
        lines.append([("train", "train", "train", "train", "val", "val", "test", "test")[i], f"img/{i}.png",
                      json.dumps(objects)])
    with open(folder / "m.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "photo", "objects"])
        writer.writerows(lines)
    return folder / "m.csv"


def test_a_table_detection_column_trains_with_tasks_from_data(tmp_path):
    manifest = write_table(tmp_path)
    proc = run_cli("train", "data=table", f"data.path={manifest}", "tasks=from_data", "backbone/image=segnet",
                   "backbone.image.channels=[8,16]", "+data.inputs.photo={type:image,column:photo}",
                   "+data.targets.objects={type:detection,column:objects}", "data.batch_size=4",
                   "trainer.max_epochs=1", "trainer.device=cpu", "trainer.progress_bar=false",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = read_results(tmp_path / "run")
    assert "test/objects/map_50" in results and "test/objects/map_sq" in results


def test_ddp_two_processes_count_every_image_once(det_run, tmp_path):
    """torchrun eval on 2 ranks (uneven shards of 5 images) gathers the detections: the COCO metrics equal
    one process's on the same checkpoint."""
    best = det_run / "checkpoints" / "best.pt"
    common = ["data.eval_batch_size=2", "split=test"]
    single = run_cli("eval", f"checkpoint={best}", *common, f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path)
    assert single.returncode == 0, single.stdout + single.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mtlrun"]
    ddp = run_cli("eval", f"checkpoint={best}", *common, f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path,
                  launcher=launcher, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    one, two = read_results(tmp_path / "one"), read_results(tmp_path / "two")
    keys = [f"test/detection/{m}" for m in COCO]
    assert [one[k] for k in keys] == pytest.approx([two[k] for k in keys], abs=1e-6, nan_ok=True)
