"""How `mtlrun predict` decodes outputs per task kind (mtlrun/inference/predictions.py), and the export formats'
wrapper and errors (mtlrun/inference/portable.py), in-process on hand-made outputs and tiny modules."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from mtlrun.inference import portable
from mtlrun.inference.predictions import Predictions
from mtlrun.tasks import Binary, Classification, Multilabel, Regression


class FakeData:
    """What Predictions asks a data module: class names and regression scales."""

    def __init__(self, names=None, scales=None):
        self.names, self.scales = names or {}, scales or {}

    def class_names(self, task):
        return self.names.get(task)

    def target_scale(self, task):
        return self.scales.get(task)


def named(**tasks):
    for name, task in tasks.items():
        task.name = name
    return tasks


def test_labels_probabilities_and_scaled_values_per_task_kind():
    tasks = named(kind=Classification(3), flag=Binary(), tags=Multilabel(2), size=Regression(dim=2),
                  score=Regression(dim=1))
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    outputs = {"kind": logits, "flag": torch.tensor([[2.0], [-1.0]]), "tags": torch.tensor([[1.0, -1.0], [-2.0, -3.0]]),
               "size": torch.tensor([[1.0, 0.0], [0.0, -1.0]]), "score": torch.tensor([[0.5], [1.5]])}
    data = FakeData(names={"kind": ["cat", "dog", "eel"], "flag": ["no", "yes"], "tags": ["a", "b"]},
                    scales={"size": ([10.0, 20.0], [2.0, 4.0])})
    rows = Predictions(["r1", "r2"], outputs, tasks, data).rows()
    assert [r["id"] for r in rows] == ["r1", "r2"]
    assert [r["kind"] for r in rows] == ["dog", "cat"]
    probs = torch.softmax(logits, 1)
    assert [rows[0][f"kind/prob/{c}"] for c in ("cat", "dog", "eel")] == probs[0].tolist()
    assert [r["flag"] for r in rows] == ["yes", "no"]
    assert rows[0]["flag/prob/yes"] == torch.sigmoid(torch.tensor(2.0)).item()
    assert rows[0]["flag/prob/no"] == (1 - torch.sigmoid(torch.tensor(2.0))).item()
    assert [r["tags"] for r in rows] == ["a", ""]  # labels over 0.5 joined by |; none: empty
    assert (rows[0]["size/0"], rows[0]["size/1"], rows[1]["size/0"], rows[1]["size/1"]) == (12.0, 20.0, 10.0, 16.0)
    assert [r["score"] for r in rows] == [0.5, 1.5]  # not standardised: raw
    records = Predictions(["r1", "r2"], outputs, tasks, data).records()
    assert records[0]["kind"]["label"] == "dog" and records[1]["tags"] == {"labels": [], "probs": pytest.approx(
        {"a": torch.sigmoid(torch.tensor(-2.0)).item(), "b": torch.sigmoid(torch.tensor(-3.0)).item()})}
    assert records[0]["size"] == {"value": [12.0, 20.0]}


def test_without_class_names_the_indices_are_the_labels():
    tasks = named(digit=Classification(3))
    rows = Predictions([0], {"digit": torch.tensor([[0.0, 0.0, 5.0]])}, tasks, FakeData()).rows()
    assert rows[0]["digit"] == 2 and set(rows[0]) == {"id", "digit", "digit/prob/0", "digit/prob/1", "digit/prob/2"}


def test_predictions_csv_defuses_text_cells_a_spreadsheet_would_run_as_formulas(tmp_path):
    """OWASP's CSV injection advice: a text starting with = + - @ tab or CR gets a leading '; numbers (negative
    values included) and texts that are plain numbers stay as they are; JSON Lines and rows() keep every value."""
    ids = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "-3", "+1.5e3", "plain", 7]
    names = ["=cmd|' /C calc'!A0", "-1", "ok"]
    tasks = named(kind=Classification(3), size=Regression(dim=1))
    n = len(ids)
    outputs = {"kind": torch.tensor([[9.0, 0.0, 0.0]] * (n - 1) + [[0.0, 0.0, 9.0]]),
               "size": torch.full((n, 1), -1.5)}
    predictions = Predictions(ids, outputs, tasks, FakeData(names={"kind": names}))
    written = predictions.write(tmp_path)
    with open(written["csv"], newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header == ["id", "kind", "kind/prob/=cmd|' /C calc'!A0", "kind/prob/-1", "kind/prob/ok", "size"]
    assert [r[0] for r in rows] == ["'=HYPERLINK(\"http://x\")", "'+1+1", "'-2+3", "'@SUM(A1)", "'\tx", "'\rx", "-3",
                                    "+1.5e3", "plain", "7"]
    assert [r[1] for r in rows] == ["'=cmd|' /C calc'!A0"] * (n - 1) + ["ok"]
    assert {r[5] for r in rows} == {"-1.5"}  # a negative number is a number, not a formula
    records = [json.loads(line) for line in written["jsonl"].read_text().splitlines()]
    assert [r["id"] for r in records] == ids and records[0]["kind"]["label"] == names[0]
    assert [r["id"] for r in predictions.rows()] == ids


class Heads(nn.Module):
    """A two-modality model: {a: sum of the present modalities' features}."""

    def __init__(self):
        super().__init__()
        self.x, self.y = nn.Linear(3, 2), nn.Linear(4, 2)

    def forward(self, inputs, modality_mask=None):
        x, y = self.x(inputs["x"]), self.y(inputs["y"])
        if modality_mask is not None:
            x = x * modality_mask["x"].unsqueeze(1)
            y = y * modality_mask["y"].unsqueeze(1)
        return {"a": x + y, "b": x - y}


def test_the_positional_wrapper_takes_inputs_then_masks_in_modality_order():
    model = Heads().eval()
    wrapper = portable.PositionalModel(model, ["x", "y"], ["b", "a"])
    batch = {"inputs": {"x": torch.randn(5, 3), "y": torch.randn(5, 4)},
             "modality_mask": {"y": torch.tensor([True, False, True, True, False])}}
    args = wrapper.arguments(batch)
    assert wrapper.input_names() == ["x", "y", "x_mask", "y_mask"]
    assert args[2].all() and torch.equal(args[3], batch["modality_mask"]["y"])  # no x mask: all present
    b, a = wrapper(*args)
    expected = model(batch["inputs"], modality_mask={"x": args[2], "y": args[3]})
    assert torch.equal(a, expected["a"]) and torch.equal(b, expected["b"])
    assert portable.PositionalModel(model, ["x"], ["a"]).input_names() == ["x"]  # one modality: no mask input


class Untraceable(nn.Module):
    def forward(self, inputs, modality_mask=None):
        return {"a": "not a tensor"}


class Branchy(nn.Module):
    def forward(self, inputs, modality_mask=None):  # a branch on a value: torch.export cannot keep both sides
        return {"a": inputs["x"] * 2 if inputs["x"].sum() > 0 else inputs["x"]}


def test_a_model_that_cannot_be_exported_names_the_format_and_the_reason(tmp_path):
    wrapper = portable.PositionalModel(Untraceable(), ["x"], ["a"])
    with pytest.raises(portable.ExportError, match="format=torchscript: torch.jit.trace cannot trace this model: "):
        portable.to_torchscript(wrapper, (torch.randn(2, 3),), tmp_path / "model.ts")
    branchy = portable.PositionalModel(Branchy(), ["x"], ["a"])
    with pytest.raises(portable.ExportError, match="format=pt2: torch.export cannot export this model: "
                                                   "GuardOnDataDependentSymNode: "):
        portable.to_pt2(branchy, (torch.randn(2, 3),), tmp_path / "model.pt2")
    assert not list(tmp_path.iterdir())  # nothing half-written
    assert portable.compare(["a"], (torch.zeros(2, 3),), (torch.zeros(3, 2),)) == {"a": float("inf")}
    assert portable.compare(["a"], (torch.zeros(2),), (torch.tensor([0.0, -0.5]),)) == {"a": 0.5}


def test_onnx_export_of_a_model_it_cannot_export_says_why_for_each_exporter(tmp_path):
    pytest.importorskip("onnxscript")
    wrapper = portable.PositionalModel(Untraceable(), ["x"], ["a"])
    with pytest.raises(portable.ExportError, match="format=onnx: torch.onnx.export cannot export this model; "
                                                   "dynamo exporter: .*; torchscript-based exporter: "):
        portable.to_onnx(wrapper, (torch.randn(2, 3),), tmp_path / "model.onnx")


@pytest.mark.parametrize("command", ["predict", "export"])
def test_predict_and_export_refuse_to_run_under_a_launcher(monkeypatch, command):
    """Under torchrun every rank would write the same prediction / export files over each other."""
    from omegaconf import OmegaConf

    import importlib

    from mtlrun import distributed
    from mtlrun.errors import UsageError
    from mtlrun.inference.opener import open_checkpoint

    monkeypatch.setattr(distributed, "dist_info", lambda: distributed.DistInfo(rank=1, world_size=2))
    cfg = OmegaConf.create({"checkpoint": "best.pt", "split": "test"})
    with pytest.raises(UsageError, match=f"mtlrun {command} runs in one process; start it without torchrun"):
        open_checkpoint(cfg, importlib.import_module(f"mtlrun.{command}").ACCEPTS, [])
