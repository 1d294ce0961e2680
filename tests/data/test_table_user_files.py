"""Files as users bring them to data=table (issue 21): a UTF-16 file without a byte-order mark, R's `NA` markers
(a penguins.csv like the palmerpenguins package's), the documented `data.split: {ratios: ...}`, prediction rows
with no input at all, and random cells (Hypothesis), which only ever give the documented data error."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
from contracts import compose_config, read_csv, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlrun.data.table import Table
from mtlrun.data.table.splits import parse_split
from mtlrun.errors import ConfigError

SPLIT = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
STATS = {"stats": {"type": "tabular", "numeric": ["x"], "categorical": ["pen"]}}
LABEL = {"label": {"type": "classification", "column": "label"}}


def write_csv(path: Path, header: list[str], rows: list[list], encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def small_rows(label=("a", "b") * 4) -> list[list]:
    """8 rows: split, x, pen, label."""
    return [[s, float(i), "ab"[i % 3 == 0], lab] for i, (s, lab) in enumerate(zip(SPLIT, label))]


def table(path: Path, inputs=None, targets=None, **kw) -> Table:
    return Table(path=str(path), inputs=inputs or STATS, targets=targets or LABEL, batch_size=4, **kw)


def problems_of(t: Table) -> list[str]:
    with pytest.raises(ConfigError) as error:
        _ = t.spec
    return error.value.problems


# ------------------------------------------------------------------------------------ 9. encodings
@pytest.mark.parametrize("written, encoding, position, problem, fix", [
    ("utf-16-le", "utf-16", "line 1, character 1",
     "cannot be read as utf-16 (UTF-16 stream does not start with BOM); a UTF-16 file without a byte-order mark "
     "needs data.encoding=utf-16-le or utf-16-be", "utf-16-le"),
    ("utf-16", "utf-8", "line 1, character 1",
     "byte 0xff is not valid utf-8 (data.encoding=utf-8); the file starts with a UTF-16 byte-order mark: "
     "data.encoding=utf-16", "utf-16"),
    ("utf-16-be", "utf-8", None,  # every byte is valid UTF-8: the header shows it
     "the header holds NUL characters, as UTF-16 text read as another encoding does; set data.encoding=utf-16-be",
     "utf-16-be"),
])
def test_any_decoding_error_names_the_file_and_the_encoding_that_reads_it(tmp_path, written, encoding, position,
                                                                          problem, fix):
    path = write_csv(tmp_path / "u16.csv", ["split", "x", "pen", "label"], small_rows(), encoding=written)
    where = f"{path} {position}: " if position else f"{path}: "
    assert problems_of(table(path, encoding=encoding)) == [where + problem]
    assert table(path, encoding=fix).state_dict()["classes"]["label"] == ["a", "b"]
    # predict reads a new manifest through the same reader: the same problem, not a UnicodeError
    new = table(path, encoding=encoding)
    new.load_state_dict(table(path, encoding=fix).state_dict())
    new.read_unlabelled()
    assert problems_of(new) == [where + problem]


# ------------------------------------------------------------------------------------ 16. NA markers
PENGUIN_COLUMNS = ["species", "island", "bill_length_mm", "flipper_length_mm", "body_mass_g", "sex", "year"]
PENGUINS = {"inputs": {"body": {"type": "tabular", "numeric": ["bill_length_mm", "flipper_length_mm"],
                                "categorical": ["island"]}},
            "targets": {"species": {"type": "classification", "column": "species"},
                        "sex": {"type": "binary", "column": "sex"},
                        "mass": {"type": "regression", "column": "body_mass_g", "standardize": True}},
            "split": {"ratios": [0.7, 0.15, 0.15], "seed": 0}}


def write_penguins(path: Path, n: int = 40) -> Path:
    """As palmerpenguins' penguins.csv writes it: quoted texts, `NA` for a missing number or sex."""
    lines = [",".join(f'"{c}"' for c in PENGUIN_COLUMNS)]
    for i in range(n):
        species, island = ("Adelie", "Torgersen") if i % 3 == 0 else ("Gentoo", "Biscoe") if i % 3 == 1 \
            else ("Chinstrap", "Dream")
        cells = [f'"{species}"', f'"{island}"', f"{36 + i % 9 + 0.1 * i:.1f}", str(180 + 2 * (i % 3) + i % 5),
                 str(3000 + 500 * (i % 3) + 10 * i), f'"{("male", "female")[i % 2]}"', "2007"]
        if i in (3, 20):
            cells[2:6] = ["NA"] * 4  # a bird not measured, as in penguins.csv rows 4 and 272
        if i in (8, 9, 30):
            cells[5] = "NA"
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_na_cells_are_refused_with_the_option_that_reads_them_and_read_as_empty_with_it(tmp_path):
    path = write_penguins(tmp_path / "penguins.csv")
    problems = problems_of(Table(path=str(path), **PENGUINS))
    hint = "; if 'NA' marks a missing value, set data.na_values=[NA] (read as an empty cell)"
    assert f"{path} row 4 (line 5), column 'bill_length_mm': not a number: 'NA' (data.inputs.body reads numbers)" \
           f"{hint}" in problems
    assert f"{path} row 4 (line 5), column 'body_mass_g': not a number: 'NA' (data.targets.mass reads numbers)" \
           f"{hint}" in problems
    sex = next(p for p in problems if p.startswith("data.targets.sex"))
    assert sex.endswith("a binary target has two; if 'NA' marks a missing label, set data.na_values=[NA] (read as "
                        "an empty cell); else use type: classification")

    data = Table(path=str(path), na_values=["NA"], **PENGUINS)
    assert data.state_dict()["classes"] == {"species": ["Adelie", "Chinstrap", "Gentoo"], "sex": ["female", "male"]}
    batches = [data.dataset(s).__getitems__(list(range(len(data.dataset(s))))) for s in ("train", "val", "test")]

    def unlabelled(task):
        return sum(int((~b["label_mask"][task]).sum()) for b in batches if task in b.get("label_mask", {}))

    assert (unlabelled("sex"), unlabelled("mass")) == (5, 2)  # 3 NA sexes + 2 birds not measured
    assert all(torch.isfinite(b["inputs"]["body"]).all() for b in batches)


def test_a_class_named_like_a_marker_stays_a_class_and_a_warning_names_the_option(tmp_path, caplog):
    path = write_csv(tmp_path / "regions.csv", ["split", "x", "pen", "label"], small_rows(("NA", "EU") * 4))
    with caplog.at_level(logging.WARNING, logger="mtlrun"):
        assert table(path).state_dict()["classes"]["label"] == ["EU", "NA"]
    assert f"{path}, column 'label': 4 cell(s) 'NA' are read as a label, but 'NA' commonly marks a missing value " \
           f"(pandas reads it as one): if it does here, set data.na_values=[NA] to read them as empty cells" \
           in caplog.messages


@pytest.mark.parametrize("na_values, cells, empty", [
    (["NA", "n/a"], ["NA", " n/a ", "na", "N/A"], [True, True, False, False]),  # exact texts, as pandas
    ([-999], ["-999", "-999.0", "999", "x"], [True, True, False, False]),  # numbers compare as numbers
    ("?", ["?", "??", "", "1"], [True, False, True, False]),  # one text; an empty cell is always empty
])
def test_na_values_match_texts_exactly_and_numbers_as_numbers(tmp_path, na_values, cells, empty):
    rows = [[s, "1", "p", "a" if i % 2 else "b", cells[i % 4]] for i, s in enumerate(SPLIT)]
    path = write_csv(tmp_path / "m.csv", ["split", "x", "pen", "label", "note"], rows)
    manifest = table(path, na_values=na_values)._prepare().manifest
    assert [c is None for c in manifest.cells["note"][:4]] == empty


@pytest.mark.parametrize("na_values, problem", [
    (["NA", None], "data.na_values[1]=null: not a cell text; quote it as the cells write it, e.g. "
                   "'data.na_values=[NA,\"null\"]'"),
    ([float("nan")], "data.na_values[0]=NaN: not a cell text; quote it as the cells write it, e.g. "
                     "'data.na_values=[NA,\"NaN\"]'"),
    ({"NA": 1}, "data.na_values={'NA': 1}: a list of the cell texts that mean a missing value, e.g. "
                "data.na_values=[NA] for a file written by R (an empty cell is always missing)"),
])
def test_na_values_that_are_not_texts_say_how_to_quote_them(tmp_path, na_values, problem):
    with pytest.raises(ConfigError) as error:
        table(tmp_path / "m.csv", na_values=na_values)
    assert problem in error.value.problems


def test_a_marker_hydra_reads_as_another_value_is_suggested_quoted(tmp_path):
    rows = [[s, ["NaN", "#N/A", "null", "1"][i % 4], "p", "ab"[i % 2]] for i, s in enumerate(SPLIT)]
    problems = problems_of(table(write_csv(tmp_path / "m.csv", ["split", "x", "pen", "label"], rows)))
    assert any(p.endswith("""for a missing value; if 'NaN' marks a missing value, set data.na_values=["NaN"] (read """
                          """as an empty cell)""") for p in problems)
    assert any(p.endswith("""if '#N/A' marks a missing value, set data.na_values=["#N/A"] (read as an empty cell)""")
               for p in problems)
    assert any(p.endswith("""if 'null' marks a missing value, set data.na_values=["null"] (read as an empty cell)""")
               for p in problems)
    assert len(table(tmp_path / "m.csv", na_values=["NaN", "#N/A", "null"]).dataset("train")) == 4


# ------------------------------------------------------------------------------------ 15. split ratios
@pytest.mark.parametrize("overrides", [
    ["data.split={ratios:[0.7,0.15,0.15],seed:0}"],  # the documented form, on the command line
    ["data.split.ratios=[0.7,0.15,0.15]"],
    ["data.split.column=null", "data.split.ratios=[0.7,0.15,0.15]"],
    ["~data.split.column", "data.split.ratios=[0.7,0.15,0.15]", "data.split.seed=0"],
])
def test_the_documented_split_ratios_compose_from_the_command_line(overrides):
    problems: list[str] = []
    assert parse_split(compose_config(["data=table", *overrides]).data.split, problems) == \
        {"ratios": [0.7, 0.15, 0.15], "seed": 0}
    assert problems == []


def test_a_split_column_and_ratios_together_say_which_to_set_to_null():
    problems: list[str] = []
    assert parse_split(compose_config(["data=table", "data.split.column=fold", "data.split.ratios=[1,1,1]"])
                       .data.split, problems) == {}
    assert problems == ["data.split={'column': 'fold', 'ratios': [1, 1, 1], 'seed': None}: both a column ('fold') "
                        "and ratios; set the other to null: data.split.ratios=null to split by the column, or "
                        "data.split.column=null to draw with the ratios"]
    assert parse_split(compose_config(["data=table", "data.split.column=fold"]).data.split, problems) == \
        {"column": "fold"}


# ------------------------------------------------------------------------------------ 12. rows without input
def test_rows_with_every_input_empty_are_named_in_a_warning_when_predicting(tmp_path, caplog):
    trained = table(write_csv(tmp_path / "m.csv", ["split", "x", "pen", "label"], small_rows()))
    new = write_csv(tmp_path / "new.csv", ["x", "pen"], [["1", "a"], ["", ""], ["2", ""], ["", ""], ["", "b"]])
    data = table(new)
    data.load_state_dict(trained.state_dict())
    data.read_unlabelled()
    with caplog.at_level(logging.WARNING, logger="mtlrun"):
        assert len(data.dataset("test")) == 5  # still predicted, as the model can, but flagged
    assert f"{new}: 2 of 5 rows have every input cell empty (rows 2, 4): they are predicted from no input at all, " \
           f"a guess that says nothing about them" in caplog.messages


# ------------------------------------------------------------------------------------ Hypothesis: any cell
CELLS = st.one_of(
    st.text(max_size=30), st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=2000),
    st.sampled_from(["NA", "NaN", "nan", "-inf", "inf", "1e400", "-0", "None", "null", "#N/A", "=1+1", "1,5",
                     "true", "yes", "\x00", "\r\n", "\"", "train", "TEST"]),
    st.integers().map(str), st.floats().map(repr))
JSON_CELLS = st.recursive(st.none() | st.booleans() | st.integers(min_value=-10**400, max_value=10**400)
                          | st.floats() | st.text(max_size=20),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                      max_size=3), max_leaves=6)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FIELDS = {"inputs": {"stats": {"type": "tabular", "numeric": ["x"], "categorical": ["pen"]},
                     "note": {"type": "text", "column": "note"}},
          "targets": {"label": {"type": "classification", "column": "label"},
                      "flag": {"type": "binary", "column": "flag"},
                      "tags": {"type": "multilabel", "column": "tags"},
                      "y": {"type": "regression", "column": "y", "standardize": True}}}
COLUMNS = ["split", "x", "pen", "note", "label", "flag", "tags", "y"]


def read_or_data_error(path: Path, **kw) -> None:
    """Reading a manifest ends in datasets or the documented data error (a ConfigError), nothing else."""
    try:
        Table(path=str(path), batch_size=4, na_values=["NA"], **FIELDS, **kw).build()
    except ConfigError:
        pass


@SETTINGS
@given(rows=st.lists(st.lists(CELLS, min_size=len(COLUMNS), max_size=len(COLUMNS)), min_size=1, max_size=10))
def test_any_csv_cells_read_or_give_the_data_error(tmp_path, rows):
    read_or_data_error(write_csv(tmp_path / "h.csv", COLUMNS, rows))


@SETTINGS
@given(rows=st.lists(st.dictionaries(st.sampled_from(COLUMNS), JSON_CELLS, max_size=len(COLUMNS)), min_size=1,
                     max_size=8))
def test_any_json_lines_values_read_or_give_the_data_error(tmp_path, rows):
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read_or_data_error(path)


@SETTINGS
@given(data=st.binary(max_size=200), encoding=st.sampled_from(["utf-8", "utf-16", "utf-16-be", "utf-32", "latin-1",
                                                                "cp1252", "ascii"]))
def test_any_bytes_in_any_encoding_read_or_give_the_data_error(tmp_path, data, encoding):
    path = tmp_path / "b.csv"
    path.write_bytes(data)
    read_or_data_error(path, encoding=encoding)


# ------------------------------------------------------------------------------------ 15, 16, 12, 14 through the CLI
@pytest.mark.e2e
def test_penguins_csv_trains_with_na_values_and_the_documented_split_then_predicts(tmp_path):
    """The experiment YAML as a user writes it (split ratios, na_values: [NA]); predict on rows with NA, a row
    with no input, and ids a spreadsheet would run as formulas."""
    write_penguins(tmp_path / "penguins.csv")
    (tmp_path / "cfg" / "experiment").mkdir(parents=True)
    data = {**PENGUINS, "path": str(tmp_path / "penguins.csv"), "na_values": ["NA"], "batch_size": 8}
    (tmp_path / "cfg" / "experiment" / "penguins.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /data: table\n  - override /tasks: from_data\n"
        f"data: {json.dumps(data)}\n")  # JSON is YAML: split written as {ratios: [0.7, 0.15, 0.15], seed: 0}
    run = tmp_path / "run"
    proc = run_cli("train", "--config-dir", str(tmp_path / "cfg"), "experiment=penguins", "trainer.max_epochs=1",
                   "trainer.device=cpu", "trainer.progress_bar=false", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert state["data"]["classes"]["sex"] == ["female", "male"]

    new = tmp_path / "new.csv"
    new.write_text('"id","island","bill_length_mm","flipper_length_mm"\n"=1+1","Dream",40.1,190\n'
                   '"-3","Biscoe",NA,200\n"@x",null,null,null\n')
    proc = run_cli("predict", f"checkpoint={run / 'checkpoints' / 'best.pt'}", f"data.path={new}",
                   'data.na_values=[NA,"null"]', f"output={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'p'}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{new}: 1 of 3 rows have every input cell empty (row 3)" in proc.stdout + proc.stderr
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert [r["id"] for r in rows] == ["'=1+1", "-3", "'@x"]  # formulas defused; a plain number stays one
    assert all(r["sex"] in ("female", "male") and float(r["mass"]) == float(r["mass"]) for r in rows)
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["=1+1", "-3", "@x"]  # JSON keeps the ids exactly
