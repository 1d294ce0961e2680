"""data=table on awkward manifests: other encodings, huge CSV cells, YAML booleans as labels, paths that leave
the data root, unreadable files met in DataLoader workers, and a train split with a single class.

User-facing behaviour is checked through the real CLI (exit code, the `error:` line, no traceback); the
variants around it in-process, on Table.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from contracts import run_cli
from PIL import Image

from mtlrun.data.loading import eval_loader
from mtlrun.data.table import Table
from mtlrun.errors import ConfigError, UsageError

SPLIT = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
COMMON = ["data=table", "tasks=from_data", "data.batch_size=4", "trainer.max_epochs=1", "trainer.device=cpu",
          "trainer.progress_bar=false"]
STATS = "+data.inputs.stats={type:tabular,numeric:[x]}"
LABEL = "+data.targets.label={type:classification,column:label}"
IMAGE = "+data.inputs.image={type:image,column:image,size:[4,4]}"


def manifest_rows(**columns) -> list[dict]:
    """8 rows (4 train, 2 val, 2 test) with x = 0..7, label a / b alternating, and the given columns."""
    rows = [{"split": s, "x": float(i), "label": "ab"[i % 2]} for i, s in enumerate(SPLIT)]
    for name, values in columns.items():
        for row, value in zip(rows, values):
            row[name] = value
    return rows


def write_csv(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f)
        writer.writerow(list(rows[0]))
        writer.writerows([["" if v is None else v for v in r.values()] for r in rows])
    return path


def write_jsonl(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode(encoding))
    return path


def write_images(folder: Path, n: int = 8) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((4, 4, 3), 30 * i, np.uint8), "RGB").save(folder / f"{i}.png")
    return [f"{folder.name}/{i}.png" for i in range(n)]


def train(tmp_path: Path, manifest: Path, *overrides: str, run: str = "run", config_dir: Path | None = None):
    options = ["--config-dir", str(config_dir)] if config_dir else []
    proc = run_cli("train", *options, *COMMON, f"data.path={manifest}", *overrides, f"hydra.run.dir={tmp_path / run}",
                   cwd=tmp_path)
    return proc, proc.stdout + proc.stderr


def error_line(proc) -> str:
    return next(line for line in proc.stderr.splitlines() if line.startswith("error: "))


def classes(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["data"]["classes"]


def table(path: Path, inputs=None, targets=None, **kw) -> Table:
    return Table(path=str(path), inputs=inputs or {"stats": {"type": "tabular", "numeric": ["x"]}},
                 targets=targets or {"label": {"type": "classification", "column": "label"}}, batch_size=4, **kw)


# ------------------------------------------------------------------------------------ 1. encodings
@pytest.mark.e2e
def test_non_utf8_manifest_names_file_line_and_the_encoding_option_which_then_reads_it(tmp_path):
    rows = manifest_rows(label=["a", "café", "a", "café", "a", "café", "a", "café"])
    manifest = write_csv(tmp_path / "latin.csv", rows, encoding="latin-1")
    proc, out = train(tmp_path, manifest, STATS, LABEL)
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    character = "train,1.0,café".index("é") + 1
    assert (f"{manifest} line 3, character {character}: byte 0xe9 is not valid utf-8 (data.encoding=utf-8); set "
            f"data.encoding to the file's encoding, e.g. data.encoding=latin-1") in proc.stderr

    proc, out = train(tmp_path, manifest, STATS, LABEL, "data.encoding=latin-1")
    assert proc.returncode == 0, out
    assert classes(tmp_path / "run")["label"] == ["a", "café"]


def test_encoding_of_jsonl_bom_and_unknown_encoding_names(tmp_path):
    rows = manifest_rows(label=["a", "b", "a", "ß", "a", "b", "a", "b"])
    jsonl = write_jsonl(tmp_path / "m.jsonl", rows, encoding="latin-1")
    with pytest.raises(ConfigError, match=rf"{jsonl} line 4, character \d+: byte 0xdf is not valid utf-8 "
                                          rf"\(data.encoding=utf-8\)"):
        _ = table(jsonl).spec
    assert table(jsonl, encoding="latin-1").state_dict()["classes"]["label"] == ["a", "b", "ß"]
    assert table(write_csv(tmp_path / "bom.csv", rows, encoding="utf-8-sig")).state_dict()["classes"]["label"] \
        == ["a", "b", "ß"]  # UTF-8 with a byte-order mark (Excel) reads as UTF-8, header included
    utf16 = write_csv(tmp_path / "utf16.csv", rows, encoding="utf-16")
    assert table(utf16, encoding="utf-16").state_dict()["classes"]["label"] == ["a", "b", "ß"]
    for name in ("klingon", "hex", None):  # hex is a codec, but bytes to bytes
        with pytest.raises(ConfigError, match=rf"data.encoding={name!r}: not a text encoding Python knows"):
            table(jsonl, encoding=name)


# ------------------------------------------------------------------------------------ 2. huge CSV cells
@pytest.mark.e2e
def test_csv_cell_over_128_kib_reads_as_in_jsonl(tmp_path):
    long_text = "word " * 40_000  # 200 KB, over csv's default field_size_limit of 131072
    rows = manifest_rows(note=[long_text if i == 1 else "short note" for i in range(8)])
    manifest = write_csv(tmp_path / "m.csv", rows)
    limit = csv.field_size_limit()
    proc, out = train(tmp_path, manifest, STATS, LABEL, "+data.inputs.note={type:text,column:note,level:word}")
    assert proc.returncode == 0, out

    note = {"note": {"type": "text", "column": "note", "level": "word", "max_len": 4}}
    from_csv, from_jsonl = table(manifest, inputs=note), table(write_jsonl(tmp_path / "m.jsonl", rows), inputs=note)
    assert from_csv.state_dict() == from_jsonl.state_dict()
    assert torch.equal(from_csv.dataset("train")[1]["inputs"]["note"], from_jsonl.dataset("train")[1]["inputs"]["note"])
    assert csv.field_size_limit() == limit  # raised for mtlrun's read only


# ------------------------------------------------------------------------------------ 3. YAML booleans
def write_experiment(folder: Path, manifest: Path, positive: str) -> Path:
    config_dir = folder / "configs"
    (config_dir / "experiment").mkdir(parents=True, exist_ok=True)
    (config_dir / "experiment" / "flags.yaml").write_text(f"""# @package _global_
defaults:
  - override /data: table
  - override /tasks: from_data
data:
  path: {manifest}
  inputs: {{stats: {{type: tabular, numeric: [x]}}}}
  targets:
    flag: {{type: binary, column: flag, positive: {positive}}}
""")
    return config_dir


@pytest.mark.e2e
def test_unquoted_yes_no_in_yaml_match_the_labels_or_say_to_quote_them(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", manifest_rows(flag=["yes", "no"] * 4))
    config_dir = write_experiment(tmp_path, manifest, "no")  # YAML: False; the default would be "yes"
    proc, out = train(tmp_path, manifest, "experiment=flags", config_dir=config_dir)
    assert proc.returncode == 0, out
    assert classes(tmp_path / "run")["flag"] == ["yes", "no"]  # [negative, positive]

    other = write_csv(tmp_path / "pos.csv", manifest_rows(flag=["pos", "neg"] * 4))
    config_dir = write_experiment(tmp_path, other, "yes")
    proc, out = train(tmp_path, other, "experiment=flags", config_dir=config_dir, run="run2")
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    assert ("data.targets.flag.positive=true: YAML reads an unquoted yes / no / true / false / on / off as a "
            f"boolean, and column 'flag' of {other} has no label that means true (labels: 'neg', 'pos'); quote "
            "the label as the column writes it, e.g. positive: \"yes\"") in proc.stderr


@pytest.mark.parametrize("values, positive, expected", [
    (["Yes", "No"], True, ["No", "Yes"]),
    (["Yes", "No"], False, ["Yes", "No"]),
    (["y", "n"], False, ["y", "n"]),
    (["TRUE", "FALSE"], False, ["TRUE", "FALSE"]),
    ([1, 0], False, [1, 0]),
    ([True, False], False, [True, False]),  # JSON booleans
])
def test_a_boolean_positive_matches_its_label(tmp_path, values, positive, expected):
    rows = manifest_rows(flag=values * 4)
    data = table(write_jsonl(tmp_path / "m.jsonl", rows),
                 targets={"flag": {"type": "binary", "column": "flag", "positive": positive}})
    assert data.state_dict()["classes"]["flag"] == expected
    target = data.dataset("train").__getitems__([0, 1])["targets"]["flag"]
    assert target.tolist() == [float(values[0] == expected[1]), float(values[1] == expected[1])]


def test_a_boolean_with_several_matching_labels_or_none_names_the_option(tmp_path):
    rows = manifest_rows(flag=["yes", "YES"] * 4, tags=["a|b", "no", "b", "a", "no", "a", "b", "no"])
    path = write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(ConfigError) as err:
        _ = table(path, targets={"flag": {"type": "binary", "column": "flag", "positive": True}}).spec
    assert ("data.targets.flag.positive=true: YAML reads an unquoted yes / no / true / false / on / off as a boolean, "
            f"and column 'flag' of {path} has several labels that mean true: 'YES', 'yes'; quote the label as the "
            "column writes it, e.g. positive: \"YES\"") in str(err.value)
    # multilabel `none: no` (the cell text of an empty label set) is the other option naming a cell value
    data = table(path, targets={"tags": {"type": "multilabel", "column": "tags", "none": False}})
    assert data.state_dict()["classes"]["tags"] == ["a", "b"]
    assert data.dataset("train").__getitems__([1])["targets"]["tags"].tolist() == [[0.0, 0.0]]
    with pytest.raises(ConfigError, match=r"data.targets.tags.none=true: .* has no label that means true"):
        _ = table(path, targets={"tags": {"type": "multilabel", "column": "tags", "none": True}}).spec


# ------------------------------------------------------------------------------------ 4. paths outside the root
@pytest.mark.e2e
def test_paths_leaving_the_data_root_are_refused_unless_allowed(tmp_path):
    data = tmp_path / "data"
    images = write_images(data / "img")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8), "RGB").save(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", data / "img" / "link.png")
    images[0] = str(data / images[0])  # absolute, inside the root: fine
    images[1] = "../outside.png"
    images[2] = str(tmp_path / "outside.png")
    images[5] = "img/link.png"  # inside by name, outside through the link
    manifest = write_csv(data / "m.csv", manifest_rows(image=images))
    proc, out = train(tmp_path, manifest, IMAGE, LABEL)
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    top = os.path.abspath(data)
    fix = ("keep the files under data.root (null: the manifest's folder), set data.root to a folder that holds "
           "them all, or set data.allow_outside_root=true to read files anywhere")
    for line in (f"{manifest} row 2 (line 3), column 'image': '../outside.png' leads outside the data root {top}; "
                 f"{fix}",
                 f"{manifest} row 3 (line 4), column 'image': '{tmp_path / 'outside.png'}' leads outside the data "
                 f"root {top}; {fix}",
                 f"{manifest} row 6 (line 7), column 'image': 'img/link.png' leads through a symbolic link to "
                 f"{os.path.realpath(tmp_path / 'outside.png')} outside the data root {top}; {fix}"):
        assert line in proc.stderr
    assert "invalid config (3 problem(s))" in proc.stderr

    proc, out = train(tmp_path, manifest, IMAGE, LABEL, "data.allow_outside_root=true", run="allowed")
    assert proc.returncode == 0, out


def test_a_symlinked_folder_leading_out_is_refused_and_data_root_moves_the_boundary(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    write_images(elsewhere)
    data.mkdir()
    os.symlink(elsewhere, data / "img")
    manifest = write_csv(data / "m.csv", manifest_rows(image=[f"img/{i}.png" for i in range(8)]))
    image = {"image": {"type": "image", "column": "image", "size": [4, 4]}}
    with pytest.raises(ConfigError, match=r"row 1 \(line 2\), column 'image': 'img/0.png' leads through a symbolic "
                                          r"link to .*elsewhere/0.png outside the data root"):
        _ = table(manifest, inputs=image).spec
    moved = write_csv(data / "up.csv", manifest_rows(image=[f"elsewhere/{i}.png" for i in range(8)]))
    assert len(table(moved, inputs=image, root=str(tmp_path)).dataset("train")) == 4
    assert len(table(manifest, inputs=image, allow_outside_root=True).dataset("train")) == 4


# ------------------------------------------------------------------------------------ 5. errors in workers
@pytest.mark.e2e
def test_unreadable_file_in_a_worker_gives_the_in_process_message(tmp_path):
    images = write_images(tmp_path / "img")
    (tmp_path / "img" / "1.png").write_bytes(b"not a png")  # exists, so validate: files passes it
    manifest = write_csv(tmp_path / "m.csv", manifest_rows(image=images))
    lines = []
    for workers in (0, 2):
        proc, out = train(tmp_path, manifest, IMAGE, LABEL, f"data.num_workers={workers}", run=f"w{workers}")
        assert proc.returncode == 2, out
        assert "Traceback" not in out and "worker" not in out
        lines.append(error_line(proc))
    assert lines[0] == lines[1]
    assert lines[0].startswith(f"error: data=table: {manifest} row 2 (line 3), column 'image': cannot read image "
                               f"file {tmp_path / 'img' / '1.png'}: UnidentifiedImageError")


def test_a_file_deleted_after_validation_fails_alike_with_and_without_workers(tmp_path):
    images = write_images(tmp_path / "img")
    manifest = write_csv(tmp_path / "m.csv", manifest_rows(image=images))
    data = table(manifest, inputs={"image": {"type": "image", "column": "image", "size": [4, 4]}})
    test = data.dataset("test")
    (tmp_path / "img" / "7.png").unlink()
    messages = []
    for workers in (0, 2):
        with pytest.raises(UsageError) as err:
            list(eval_loader(test, batch_size=1, num_workers=workers))
        assert type(err.value) is UsageError and err.value.exit_code == 2
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"data=table: {manifest} row 8 (line 9), column 'image': cannot read image file")


# ------------------------------------------------------------------------------------ 6. a single class
@pytest.mark.e2e
def test_single_class_in_the_train_split_warns_and_trains(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", manifest_rows(label=["a"] * 8))
    proc, out = train(tmp_path, manifest, STATS, LABEL)
    assert proc.returncode == 0, out
    assert (f"data.targets.label: every labelled row of the train split has the class 'a' (column 'label' of "
            f"{manifest}); the task has a single class to learn") in out
    assert classes(tmp_path / "run")["label"] == ["a"]
