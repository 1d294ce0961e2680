"""`mtlrun predict` and `mtlrun export` end to end, and `mtlrun.load`, on a tiny table run: three modalities, four
tasks, trained from the example's manifest (built-in data: tests/cli/test_predict_builtin.py)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from contracts import REPO, read_csv, run_cli

import mtlrun
from mtlrun.errors import ConfigError, UsageError

pytestmark = pytest.mark.e2e
INPUT_COLUMNS = ["image", "note", "ink", "pen"]


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> dict[str, Path]:
    """The example manifest (96/32/32 rows), one epoch of experiment=multidigits_table, and new.csv: the test
    rows with the input columns only (no targets, no split), row 1 without its image and row 2 without its note."""
    root = tmp_path_factory.mktemp("table_predict")
    spec = importlib.util.spec_from_file_location("make_table", REPO / "examples" / "make_multidigits_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = root / "data"
    module.main(["--out", str(data), "--n-train", "96", "--n-val", "32", "--n-test", "32"])
    run = root / "run"
    proc = run_cli("train", "--config-dir", str(REPO / "examples" / "configs"), "experiment=multidigits_table",
                   f"data.path={data / 'manifest.csv'}", "data.batch_size=32", "trainer.max_epochs=1",
                   "trainer.device=cpu", "trainer.progress_bar=false", f"hydra.run.dir={run}", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    test = [r for r in read_csv(data / "manifest.csv") if r["split"] == "test"]
    with open(data / "new.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(INPUT_COLUMNS)
        for i, r in enumerate(test):
            writer.writerow(["" if (i, c) in ((1, "image"), (2, "note")) else r[c] for c in INPUT_COLUMNS])
    predicted = root / "predicted"
    proc = run_cli("predict", f"checkpoint={run / 'checkpoints' / 'best.pt'}", f"data.path={data / 'new.csv'}",
                   f"hydra.run.dir={predicted}", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"root": root, "data": data, "best": run / "checkpoints" / "best.pt", "new": data / "new.csv",
            "predicted": predicted}


def masked_test_outputs(best: Path) -> dict[str, torch.Tensor]:
    """The model's outputs on the checkpoint's own test split (the same rows as new.csv), with the image of row 1
    and the note of row 2 missing as empty cells make them: zeros and modality_mask False."""
    loaded = mtlrun.load(best)
    dataset = loaded.data.dataset("test")
    batch = dataset.__getitems__(list(range(len(dataset))))
    masks = {m: batch.get("modality_mask", {}).get(m, torch.ones(len(dataset), dtype=torch.bool)).clone()
             for m in batch["inputs"]}
    for row, modality in ((1, "image"), (2, "note")):
        masks[modality][row] = False
        batch["inputs"][modality][row] = 0
    with torch.no_grad():
        return loaded.model(batch["inputs"], modality_mask=masks)


def test_predict_reads_a_manifest_without_targets_and_writes_the_models_outputs(table_run):
    rows = read_csv(table_run["predicted"] / "predictions.csv")
    records = [json.loads(line) for line in (table_run["predicted"] / "predictions.jsonl").read_text().splitlines()]
    out = masked_test_outputs(table_run["best"])
    assert len(rows) == len(records) == 32
    assert [r["id"] for r in rows] == [str(i) for i in range(32)]  # no id column: the row's index
    classes = torch.load(table_run["best"], weights_only=True)["data"]["classes"]
    for task in ("left", "right"):
        probs = torch.softmax(out[task], dim=1)
        assert [r[task] for r in rows] == [str(classes[task][i]) for i in probs.argmax(1).tolist()]
        written = torch.tensor([[float(r[f"{task}/prob/{c}"]) for c in classes[task]] for r in rows])
        torch.testing.assert_close(written, probs, atol=1e-6, rtol=0)
    positive = torch.sigmoid(out["parity"].view(-1))
    assert classes["parity"] == ["even", "odd"]
    assert [r["parity"] for r in rows] == ["odd" if p > 0.5 else "even" for p in positive.tolist()]
    torch.testing.assert_close(torch.tensor([float(r["parity/prob/odd"]) for r in rows]), positive, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor([float(r["sum"]) for r in rows]), out["sum"].view(-1), atol=1e-6, rtol=0)
    assert records[2]["id"] == 2 and records[2]["parity"]["label"] == rows[2]["parity"]
    assert records[2]["left"]["probs"]["3"] == float(rows[2]["left/prob/3"])
    assert records[2]["sum"]["value"] == float(rows[2]["sum"])


def test_rows_missing_a_modality_are_predicted_from_the_others(table_run):
    """Rows 1 (no image) and 2 (no note) get predictions, and they are those of the masked model: unmasked,
    the same rows would give other outputs."""
    rows = read_csv(table_run["predicted"] / "predictions.csv")
    full = mtlrun.load(table_run["best"]).predict_split("test").outputs
    for row in (1, 2):
        probs = [float(rows[row][f"left/prob/{c}"]) for c in range(10)]
        assert all(np.isfinite(probs)) and abs(sum(probs) - 1) < 1e-5
        assert not torch.allclose(torch.tensor(probs), torch.softmax(full["left"][row], 0), atol=1e-7)


def test_a_bad_cell_stops_predict_with_trainings_message(table_run, tmp_path):
    rows = read_csv(table_run["data"] / "manifest.csv")
    rows[4]["ink"] = "abc"
    bad = table_run["data"] / "bad.csv"
    with open(bad, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    proc = run_cli("predict", f"checkpoint={table_run['best']}", f"data.path={bad}", f"output={tmp_path / 'out'}",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = f"{bad} row 5 (line 6), column 'ink': not a number: 'abc' (data.inputs.stats reads numbers)"
    assert line in proc.stderr
    assert not (tmp_path / "out" / "predictions.csv").exists()
    # training reads the same file with the same message (the table as the checkpoint's config declares it)
    from hydra.utils import instantiate

    data_cfg = {**torch.load(table_run["best"], weights_only=True)["config"]["data"], "path": str(bad)}
    with pytest.raises(ConfigError) as trained:
        instantiate(data_cfg).spec
    assert line in trained.value.problems


def test_mtlrun_load_predicts_what_the_cli_writes(table_run, tmp_path):
    predictions = mtlrun.load(table_run["best"]).predict_table(table_run["new"])
    assert [{k: str(v) for k, v in r.items()} for r in predictions.rows()] == \
        read_csv(table_run["predicted"] / "predictions.csv")
    assert predictions.write(tmp_path)["csv"].read_text() == \
        (table_run["predicted"] / "predictions.csv").read_text()


def test_an_id_column_is_written_as_the_id(table_run, tmp_path):
    with_ids = table_run["data"] / "ids.csv"
    rows = read_csv(table_run["new"])
    with open(with_ids, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["key", *INPUT_COLUMNS])
        writer.writeheader()
        writer.writerows({"key": f"s{i}", **r} for i, r in enumerate(rows))
    predictions = mtlrun.load(table_run["best"], data_path=with_ids).predict_split("test", id_column="key")
    assert predictions.ids == [f"s{i}" for i in range(32)]
    with pytest.raises(UsageError, match="id_column=nope: .* has no such column"):
        mtlrun.load(table_run["best"], data_path=with_ids).predict_split("test", id_column="nope")


def test_export_weights_round_trips_exactly(table_run, tmp_path):
    out = tmp_path / "weights"
    proc = run_cli("export", f"checkpoint={table_run['best']}", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.yaml", "data_state.json", "export.json"}
    assert json.loads((out / "data_state.json").read_text()) == torch.load(table_run["best"], weights_only=True)["data"]
    from_export = mtlrun.load(out, data_path=table_run["new"]).predict_split("test").outputs
    from_checkpoint = mtlrun.load(table_run["best"]).predict_table(table_run["new"]).outputs
    assert from_export.keys() == from_checkpoint.keys()
    assert all(torch.equal(from_export[t], from_checkpoint[t]) for t in from_export)


@pytest.mark.parametrize("fmt", ["pt2", "torchscript", "onnx"])
def test_pt2_torchscript_and_onnx_exports_compute_the_pytorch_outputs(table_run, tmp_path, fmt):
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    out = tmp_path / fmt
    proc = run_cli("export", f"checkpoint={table_run['best']}", f"format={fmt}", f"data.path={table_run['new']}",
                   f"output={out}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = json.loads((out / "export.json").read_text())
    tasks = ["left", "right", "parity", "sum"]
    assert [o["name"] for o in meta["outputs"]] == tasks
    assert [i["name"] for i in meta["inputs"]] == ["image", "note", "stats", "image_mask", "note_mask", "stats_mask"]
    assert all(f"{t}: max abs diff" in proc.stderr + proc.stdout for t in tasks)
    assert all(v < 1e-4 for v in meta["max_abs_diff"].values())
    if fmt == "onnx":  # torch.export traces the GRU text encoder too (unpacked while exporting)
        assert meta["exporter"] == "dynamo" and "exporters_failed" not in meta, meta
    # run the file here, on every row of new.csv (its missing cells as masks), against the PyTorch model
    loaded = mtlrun.load(table_run["best"], data_path=table_run["new"])
    dataset = loaded.data.dataset("test")
    batch = dataset.__getitems__(list(range(len(dataset))))
    masks = {m: batch.get("modality_mask", {}).get(m, torch.ones(len(dataset), dtype=torch.bool))
             for m in ("image", "note", "stats")}
    args = [batch["inputs"][m] for m in ("image", "note", "stats")] + list(masks.values())
    with torch.no_grad():
        expected = loaded.model(batch["inputs"], modality_mask=masks)
    if fmt == "pt2":  # torch alone: no mtlrun class is needed to load it
        with torch.no_grad():
            got = torch.export.load(str(out / "model.pt2")).module()(*args)
    elif fmt == "torchscript":
        with torch.no_grad():
            got = torch.jit.load(str(out / "model.ts"))(*args)
    else:
        session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        given = dict(zip(["image", "note", "stats", "image_mask", "note_mask", "stats_mask"], args))
        got = session.run(tasks, {i.name: given[i.name].numpy() for i in session.get_inputs()})
    for t, value in zip(tasks, got):
        assert (torch.as_tensor(value) - expected[t]).abs().max() < 1e-4, t


def test_a_hostile_checkpoint_is_refused_like_eval(table_run, tmp_path):
    state = torch.load(table_run["best"], weights_only=True)
    state["config"]["data"]["_target_"] = "os.system"
    hostile = tmp_path / "hostile.pt"
    torch.save(state, hostile)
    proc = run_cli("predict", f"checkpoint={hostile}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "refused" in proc.stderr and "data._target_=os.system" in proc.stderr
    assert not (tmp_path / "run" / "predictions.csv").exists()
    from safetensors.torch import save_file

    with pytest.raises(UsageError, match="refused"):  # export and mtlrun.load read checkpoints as predict does
        mtlrun.load(hostile)
    export = tmp_path / "export"  # an exported folder's config.yaml is checked as a checkpoint's config is
    export.mkdir()
    save_file({"weight": torch.zeros(1)}, str(export / "model.safetensors"))
    (export / "data_state.json").write_text("{}")
    (export / "config.yaml").write_text("data:\n  _target_: os.system\n")
    with pytest.raises(UsageError, match="(?s)refused.*data._target_=os.system"):
        mtlrun.load(export)
