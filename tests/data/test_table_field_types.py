"""data=table's field types are a registry (mtlrun.data.table.fields): a new type is one class registered under
its `type:` name, and the manifest reader, the checks, the checkpoint state and the spec take it from there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlrun.data.base import TargetInfo
from mtlrun.data.table import Table
from mtlrun.data.table.fields import INPUT_TYPES, TARGET_TYPES
from mtlrun.data.table.fields.base import REQUIRED, Field
from mtlrun.errors import ConfigError


class OrdinalField(Field):
    """`type: ordinal`: ordered levels (`levels`, lowest first) as float [1], the level's index; `center: true`
    subtracts the train split's mean index (fitted, so it travels in the checkpoint's state)."""

    defaults = {"column": REQUIRED, "levels": REQUIRED, "center": False}

    def check_options(self, problems: list[str]) -> None:
        levels = self.options["levels"]
        self.need(problems, isinstance(levels, list) and len(levels) >= 2, "levels",
                  "must be a list of two or more levels, lowest first")

    def read(self, build, train: np.ndarray):
        index = {level: i for i, level in enumerate(self.options["levels"])}
        values = torch.full((build.m.rows, 1), float("nan"))
        present = np.zeros(build.m.rows, dtype=bool)
        for row, cell in enumerate(build.m.cells[self.column]):
            if cell is None:
                continue
            if cell not in index:
                build.problems.add(f"{build.m.at(row, self.column)}: {cell!r} is not a level of {self.key}")
                continue
            values[row, 0], present[row] = index[cell], True
        if self.options["center"]:
            mean = build.fitted("targets", self.name, lambda: float(values[train][present[train]].mean()))
            values -= mean
        return values, present

    def info(self, build) -> TargetInfo:
        return TargetInfo("regression", dim=1)


@pytest.fixture
def ordinal(monkeypatch):
    """The type registered for one test; monkeypatch takes it out again."""
    monkeypatch.setitem(TARGET_TYPES, "ordinal", OrdinalField)


def write_manifest(folder, sizes):
    path = folder / "manifest.csv"
    splits = ["train", "train", "train", "val", "test"]
    path.write_text("split,size,x\n" + "".join(f"{s},{z},{i}\n" for i, (s, z) in enumerate(zip(splits, sizes))))
    return path


def ordinal_table(path, **options) -> Table:
    return Table(path=str(path), inputs={"stats": {"type": "tabular", "numeric": ["x"]}},
                 targets={"size": {"type": "ordinal", "column": "size", "levels": ["S", "M", "L"], **options}})


def test_a_registered_field_type_reads_a_manifest_and_keeps_its_state(ordinal, tmp_path):
    path = write_manifest(tmp_path, ["S", "L", "", "M", "L"])
    data = ordinal_table(path, center=True)
    assert data.spec.targets == {"size": TargetInfo("regression", dim=1)}
    assert data.state_dict()["targets"] == {"size": 1.0}  # train levels S and L (the third is empty): mean 1
    train = data.dataset("train").__getitems__([0, 1, 2])
    assert train["targets"]["size"][:2].flatten().tolist() == [-1.0, 1.0]
    assert train["label_mask"]["size"].tolist() == [True, True, False]
    assert data.dataset("test").__getitems__([0])["targets"]["size"].item() == 1.0

    # a checkpoint's state wins over refitting: the same centre, whatever the train split now holds
    again = ordinal_table(write_manifest(tmp_path, ["L", "L", "L", "M", "L"]), center=True)
    again.load_state_dict(data.state_dict())
    assert again.dataset("train").__getitems__([0])["targets"]["size"].item() == 1.0


def test_a_registered_field_type_gets_the_option_checks_and_problem_reports_of_every_type(ordinal, tmp_path):
    path = write_manifest(tmp_path, ["S", "XL", "M", "M", "S"])
    with pytest.raises(ConfigError) as bad_options:
        ordinal_table(path, levels="S", colour="red")
    assert "data.targets.size: unknown option(s) colour for type ordinal; valid: type, column, levels, center" \
        in str(bad_options.value)
    assert "data.targets.size.levels='S': must be a list of two or more levels, lowest first" in str(bad_options.value)
    with pytest.raises(ConfigError, match=r"row 2 \(line 3\), column 'size': 'XL' is not a level of data.targets.size"):
        ordinal_table(path).spec


def test_the_type_names_come_from_the_registry_alone(ordinal, tmp_path, monkeypatch):
    path = write_manifest(tmp_path, ["S", "L", "M", "M", "S"])
    with pytest.raises(ConfigError, match="valid target types: classification, binary, multilabel, regression, "
                                          "segmentation, depth, detection, tags, ordinal"):
        Table(path=str(path), inputs={"stats": {"type": "tabular", "numeric": ["x"]}},
              targets={"size": {"type": "ordnial", "column": "size"}})
    monkeypatch.delitem(TARGET_TYPES, "ordinal")
    with pytest.raises(ConfigError, match="data.targets.size.type=ordinal: valid target types: classification, "
                                          "binary, multilabel, regression, segmentation, depth, detection, tags$"):
        ordinal_table(path)
    assert list(INPUT_TYPES) == ["image", "text", "audio", "tabular"]


def test_a_type_that_is_not_a_name_is_a_config_error(tmp_path):
    path = write_manifest(tmp_path, ["S", "L", "M", "M", "S"])
    with pytest.raises(ConfigError, match=r"data.inputs.stats.type=\['tabular'\]: valid input types: image, text"):
        Table(path=str(path), inputs={"stats": {"type": ["tabular"], "numeric": ["x"]}},
              targets={"size": {"type": "regression", "column": "x"}})
