"""`mtlrun predict` on built-in data: a split of the session's trained multidigits run, and a tiny scenes run whose
dense tasks are written as PNG files (a table run: tests/cli/test_predict_export.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from contracts import read_csv, run_cli
from PIL import Image

import mtlrun
from mtlrun.errors import UsageError

pytestmark = pytest.mark.e2e


def test_predict_a_built_in_split(trained_run, tmp_path):
    best = trained_run / "checkpoints" / "best.pt"
    proc = run_cli("predict", f"checkpoint={best}", "split=val", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = read_csv(tmp_path / "run" / "predictions.csv")
    loaded = mtlrun.load(best)
    dataset = loaded.data.dataset("val")
    assert len(rows) == len(dataset) == 128 and [r["id"] for r in rows] == [str(i) for i in range(128)]
    with torch.no_grad():
        out = loaded.model(dataset.__getitems__(list(range(128)))["inputs"])
    for task in ("left", "right"):
        assert [int(r[task]) for r in rows] == out[task].argmax(1).tolist()
        written = torch.tensor([[float(r[f"{task}/prob/{c}"]) for c in range(10)] for r in rows])
        torch.testing.assert_close(written, torch.softmax(out[task], 1), atol=1e-6, rtol=0)
    assert (tmp_path / "run" / "config.yaml").is_file()
    with pytest.raises(UsageError, match="data.path=.*new rows are read by data=table; .* predict one of its splits"):
        mtlrun.load(best, data_path=tmp_path / "new.csv")


def test_dense_tasks_are_written_as_png_files(tmp_path):
    tiny = ["experiment=scenes_hps", "data.n_train=8", "data.n_val=4", "data.n_test=4", "data.image_size=16",
            "data.batch_size=4", "backbone.image.channels=[8,16]", "trainer.max_epochs=1", "trainer.device=cpu",
            "trainer.progress_bar=false"]
    proc = run_cli("train", *tiny, f"hydra.run.dir={tmp_path / 'train'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    best = tmp_path / "train" / "checkpoints" / "best.pt"
    out = tmp_path / "predicted"
    proc = run_cli("predict", f"checkpoint={best}", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 4
    loaded = mtlrun.load(best)
    with torch.no_grad():
        expected = loaded.model(loaded.data.dataset("test").__getitems__([0, 1, 2, 3])["inputs"])
    for k, row in enumerate(rows):
        seg = np.asarray(Image.open(out / row["segmentation"]))
        assert seg.dtype == np.uint8 and seg.shape == (16, 16)
        assert (seg == expected["segmentation"][k].argmax(0).numpy()).all()
        depth = np.asarray(Image.open(out / row["depth"])).astype(np.float64) * float(row["depth/png_scale"])
        want = expected["depth"][k, 0].clamp_min(0).double().numpy()
        assert np.abs(depth - want).max() <= float(row["depth/png_scale"]) / 2 + 1e-9
        normals = np.asarray(Image.open(out / row["normals"]))
        assert normals.shape == (16, 16, 3) and normals.dtype == np.uint8
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert record["segmentation"] == {"file": rows[0]["segmentation"]}
    assert record["depth"]["png_scale"] == float(rows[0]["depth/png_scale"])
