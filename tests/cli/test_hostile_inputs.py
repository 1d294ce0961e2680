"""The hostile-input harness: the same conditions, applied to every command that writes files or reads user
files, through the real CLI.

A command joins by one entry in COMMANDS: how to run it so that it works, which arguments send its output to a
folder, which of its options take a number, and which user file it reads (crafted by CRAFTED). Every entry
then meets every condition:

- its output folder is read-only (a real read-only bind mount, made in a user namespace with `unshare`, since
  the suite may run as root, whom permissions do not stop): exit 1;
- its output folder is full (a 4 KiB tmpfs mounted there the same way): exit 1;
- its output "folder" is an existing file: exit 2;
- its output folder holds another command's records (a `mtlrun train` run): exit 2 (report, whose files go
  beside the runs it reads by design, must work there and change none of them);
- a crafted input file (a checkpoint with an empty config, NaN weights, a truncated file, a results.json of
  NaN and strings): exit 2;
- NaN or infinity in each numeric option: exit 2.

Each asserts the exit code, one `error:` line and no traceback, and that no file that was there before
changed. The default run covers each command under a rotation of the conditions (every command and every
condition several times); `pytest --exhaustive` runs the whole grid.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from contracts import TINY, run_cli

pytestmark = pytest.mark.e2e

RUN = [*TINY, "trainer.max_epochs=1", "trainer.progress_bar=false"]


# ------------------------------------------------------------------------------------ crafted user files
def _checkpoint(trained_run: Path, tmp: Path, name: str, change) -> Path:
    state = copy.deepcopy(torch.load(trained_run / "checkpoints" / "best.pt", map_location="cpu",
                                     weights_only=True))
    change(state)
    path = tmp / f"{name}.pt"
    torch.save(state, path)
    return path


def _nan_weights(state):
    for value in state["model"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))


def _truncated(trained_run: Path, tmp: Path) -> Path:
    path = tmp / "truncated.pt"
    data = (trained_run / "checkpoints" / "best.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


CHECKPOINTS: dict[str, Callable[[Path, Path], Path]] = {
    "config_is_empty": lambda run, tmp: _checkpoint(run, tmp, "empty", lambda s: s.update(config={})),
    "weights_are_nan": lambda run, tmp: _checkpoint(run, tmp, "nan", _nan_weights),
    "weights_of_another_shape": lambda run, tmp: _checkpoint(
        run, tmp, "shape", lambda s: s["model"].update({k: torch.zeros(3) for k in list(s["model"])[:1]})),
    "truncated": _truncated,
}


def _runs_folder(trained_run: Path, tmp: Path, results: str) -> Path:
    """A folder of one run for `mtlrun report`, its results.json replaced by `results`."""
    root = tmp / "runs"
    shutil.copytree(trained_run, root / "0", ignore=shutil.ignore_patterns("checkpoints"))
    (root / "0" / "results.json").write_text(results)
    return root


RESULTS = {
    "results_nan": '{"metrics": {"test/left/accuracy": NaN, "test/right/accuracy": Infinity}}',
    "results_strings": '{"metrics": {"test/left/accuracy": "0.9", "test/right/accuracy": [1]}}',
}


CONLL_LINES = ["-DOCSTART- -X- -X- O", "", "Peter NNP B-NP B-PER", "lives VBZ B-VP O", "in IN B-PP O",
               "Bonn NNP B-NP B-LOC", ". . O O", ""]
CONLL_CRAFTED = {  # a CoNLL file as data=conll reads it, made hostile
    "conll_wrong_columns": "\n".join([*CONLL_LINES, "Bonn NNP B-NP", ""]),
    "conll_unknown_tag": "\n".join([*CONLL_LINES, "Bonn NNP B-NP B-CITY", ""]),
    "conll_not_utf8": b"Peter NNP B-NP B-PER\n\xff\xfe NNP B-NP O\n",
    "conll_no_sentence": "-DOCSTART- -X- -X- O\n\n\n",
}


def _conll(tmp: Path, name: str = "ok", content: str | bytes = "\n".join(CONLL_LINES * 4)) -> Path:
    path = tmp / "conll" / f"{name}.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _conll_train(run: Path, tmp: Path) -> list[str]:
    """A tiny data=conll run on CoNLL files written into `tmp`; the val file is the one the conditions vary."""
    path = _conll(tmp)
    return ["train", "data=conll", "tasks=from_data", f"data.train={path}", f"data.test={path}",
            "data.batch_size=2", "backbone.text.embed_dim=8", "backbone.text.hidden=8", "trainer.max_epochs=1",
            "trainer.device=cpu", "trainer.progress_bar=false"]


COCO_IMAGES = [{"id": 1, "file_name": "0.png", "width": 16, "height": 16},
               {"id": 2, "file_name": "1.png", "width": 16, "height": 16}]
COCO_BOX = {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], "iscrowd": 0}
COCO_CRAFTED = {  # an instances JSON as data=coco reads it, made hostile
    "coco_box_outside": [{**COCO_BOX, "bbox": [10, 2, 8, 8]}],
    "coco_empty_box": [{**COCO_BOX, "bbox": [2, 2, 0, 8]}],
    "coco_unknown_category": [{**COCO_BOX, "category_id": 9}],
    "coco_missing_image": [{**COCO_BOX, "image_id": 7}],
    "coco_nan_box": '{"images": %s, "categories": [{"id": 1, "name": "sq"}], "annotations": [{"id": 10, '
                    '"image_id": 1, "category_id": 1, "bbox": [NaN, 2, 8, 8]}]}',
    "coco_not_json": "{\"images\": [" * 3,
}


def _coco(tmp: Path, name: str = "ok", content=(COCO_BOX,)) -> str:
    """An instances JSON under `tmp`/coco (its two 16 x 16 images too); returns its path relative to the root."""
    import json

    import numpy as np
    from PIL import Image

    root = tmp / "coco"
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 60 * i, dtype=np.uint8), "RGB").save(root / "img" / f"{i}.png")
    if isinstance(content, str):
        text = content % json.dumps(COCO_IMAGES) if "%s" in content else content
    else:
        text = json.dumps({"images": COCO_IMAGES, "categories": [{"id": 1, "name": "sq"}],
                           "annotations": list(content)})
    (root / f"{name}.json").write_text(text)
    return f"{name}.json"


def _coco_train(run: Path, tmp: Path) -> list[str]:
    """A tiny data=coco detection run on files written into `tmp`; the val annotations are what varies."""
    return ["train", "data=coco", f"data.root={tmp / 'coco'}", f"data.train={{annotations:{_coco(tmp)},images:img}}",
            "data.image_size=[16,16]", "tasks=from_data", "backbone/image=segnet", "backbone.image.channels=[4,8]",
            "data.batch_size=2", "trainer.max_epochs=1", "trainer.device=cpu", "trainer.progress_bar=false"]


DETECTION_RUN = ["train", "experiment=scenes_det", "data.n_train=8", "data.n_val=4", "data.n_test=4",
                 "data.batch_size=4", "data.image_size=16", "backbone.image.channels=[4,8]", "trainer.max_epochs=1",
                 "trainer.device=cpu", "trainer.progress_bar=false"]


# ---------------------------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class Command:
    name: str
    # the command and its options; `run` is the session's trained_run, `tmp` a scratch folder
    args: Callable[[Path, Path], list[str]]
    # the arguments that name the user file it reads, in a run that works (none for train)
    source: Callable[[Path, Path], list[str]]
    # the arguments that send its output into `out`
    output: Callable[[Path], list[str]]
    # options that take a number
    numeric: tuple[str, ...] = ()
    # name -> the arguments that take the place of `source`, naming a crafted file
    crafted: dict[str, Callable[[Path, Path], list[str]]] = field(default_factory=dict)
    # its files go next to other commands' records by design (report's default --out is the runs folder):
    # in a folder of another command's records it must work and leave those records as they were
    writes_beside_records: bool = False

    def works(self, run: Path, tmp: Path) -> list[str]:
        return [*self.args(run, tmp), *self.source(run, tmp)]


def _checkpoints(key: str) -> dict[str, Callable[[Path, Path], list[str]]]:
    return {name: (lambda run, tmp, make=make: [f"{key}={make(run, tmp)}"]) for name, make in CHECKPOINTS.items()}


def _best(run: Path, tmp: Path) -> list[str]:
    return [f"checkpoint={run / 'checkpoints' / 'best.pt'}"]


COMMANDS = [
    Command("train", lambda run, tmp: ["train", *RUN], lambda run, tmp: [], lambda out: [f"hydra.run.dir={out}"],
            numeric=("optim.lr", "tasks.left.weight", "optim.weight_decay"), crafted=_checkpoints("resume")),
    Command("eval", lambda run, tmp: ["eval"], _best, lambda out: [f"hydra.run.dir={out}"],
            crafted=_checkpoints("checkpoint")),
    Command("predict", lambda run, tmp: ["predict", "split=test", f"hydra.run.dir={tmp / 'log'}"], _best,
            lambda out: [f"output={out}"], crafted=_checkpoints("checkpoint")),
    Command("export", lambda run, tmp: ["export", f"hydra.run.dir={tmp / 'log'}"], _best,
            lambda out: [f"output={out}"], numeric=("tolerance",), crafted=_checkpoints("checkpoint")),
    Command("report", lambda run, tmp: ["report"],
            lambda run, tmp: [str(_runs_folder(run, tmp, (run / "results.json").read_text()))],
            lambda out: ["--out", str(out)],
            crafted={name: (lambda run, tmp, text=text: [str(_runs_folder(run, tmp, text))])
                     for name, text in RESULTS.items()}, writes_beside_records=True),
    # data=conll, a reader of user files: the val file is the one crafted
    Command("train_conll", _conll_train, lambda run, tmp: [f"data.val={_conll(tmp)}"],
            lambda out: [f"hydra.run.dir={out}"], numeric=("data.max_len", "data.min_freq"),
            crafted={name: (lambda run, tmp, name=name, text=text: [f"data.val={_conll(tmp, name, text)}"])
                     for name, text in CONLL_CRAFTED.items()}),
    # data=coco, a reader of user files: the val annotations are the file crafted
    Command("train_coco", _coco_train, lambda run, tmp: [f"data.val={{annotations:{_coco(tmp)},images:img}}"],
            lambda out: [f"hydra.run.dir={out}"],
            crafted={name: (lambda run, tmp, name=name, content=content:
                            [f"data.val={{annotations:{_coco(tmp, name, content)},images:img}}"])
                     for name, content in COCO_CRAFTED.items()}),
    # the detection task's own numbers (its decoding, its target assignment) and scenes' box threshold
    Command("train_detection", lambda run, tmp: DETECTION_RUN, lambda run, tmp: [],
            lambda out: [f"hydra.run.dir={out}"],
            numeric=("tasks.detection.score_threshold", "tasks.detection.nms_iou", "tasks.detection.center_radius",
                     "data.min_box_area")),
    Command("affinity", lambda run, tmp: ["affinity", *RUN, "affinity.steps=2", "affinity.every=1"],
            lambda run, tmp: [], lambda out: [f"hydra.run.dir={out}"], numeric=("affinity.lr", "optim.lr")),
]
BY_NAME = {command.name: command for command in COMMANDS}


# ------------------------------------------------------------------------------------------- conditions
@functools.lru_cache(maxsize=1)
def _can_mount() -> bool:
    """Whether this machine lets an unprivileged user namespace bind-mount (Linux with user namespaces)."""
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


def _mounted(setup: str, out: Path) -> list[str]:
    """The launcher that runs the command with `out` re-mounted by `setup` in a private mount namespace: the
    mount is gone when the command ends, whatever happens."""
    if not _can_mount():
        pytest.skip("needs `unshare -rm` (Linux user namespaces) to make a read-only or full folder")
    script = f'{setup.format(out=out)} && exec "$@"'
    return ["unshare", "-rm", "sh", "-c", script, "sh", sys.executable, "-m", "mtlrun"]


def _previous_files(out: Path) -> None:
    out.mkdir()
    (out / "notes.txt").write_text("the user's file\n")


READ_ONLY = "mount --bind {out} {out} && mount -o remount,ro,bind {out} {out}"
FULL = "mount -t tmpfs -o size=4k tmpfs {out} && printf 'the user' > {out}/notes.txt"


@dataclass(frozen=True)
class Condition:
    name: str
    exit_code: int
    prepare: Callable[[Path, Path], None]  # (out, trained_run) -> None: what is there before
    launcher: Callable[[Path], list[str] | None] = lambda out: None


CONDITIONS = {
    "read_only_output": Condition("read_only_output", 1, lambda out, run: _previous_files(out),
                                  lambda out: _mounted(READ_ONLY, out)),
    "full_disk": Condition("full_disk", 1, lambda out, run: out.mkdir(), lambda out: _mounted(FULL, out)),
    "output_is_a_file": Condition("output_is_a_file", 2, lambda out, run: out.write_text("not a folder\n")),
    "another_commands_records": Condition("another_commands_records", 2,
                                          lambda out, run: shutil.copytree(run, out)),
}


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_refused(proc, exit_code: int, before: dict[str, str], root: Path) -> None:
    """Exit `exit_code` with one `error:` line (none for exit 0), no traceback, no earlier file changed and no
    temp file left."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == exit_code, out
    assert "Traceback" not in out, out
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == (1 if exit_code else 0), proc.stderr
    after = _snapshot(root)
    assert {name: digest for name, digest in after.items() if name in before} == before, "an earlier file changed"
    assert not [name for name in after if name.endswith(".tmp")], after


# ------------------------------------------------------------------------------------------------ grid
def _rotation(names: list[str], kinds: list[str], per_name: int) -> set[tuple[str, str]]:
    """`per_name` kinds for each name, rotating through the kinds so that each kind is met about as often:
    the default run's subset of the names x kinds grid."""
    return {(name, kinds[(i + j) % len(kinds)]) for i, name in enumerate(names) for j in range(per_name)}


def _grid(cells: list[tuple[str, str]], default: set[tuple[str, str]]):
    return [pytest.param(*cell, id="-".join(cell),
                         marks=() if cell in default else pytest.mark.exhaustive) for cell in cells]


OUTPUT_CELLS = [(c.name, k) for c in COMMANDS for k in CONDITIONS]
OUTPUT_DEFAULT = _rotation([c.name for c in COMMANDS], list(CONDITIONS), per_name=1)


@pytest.mark.parametrize("command, condition", _grid(OUTPUT_CELLS, OUTPUT_DEFAULT))
def test_output_conditions(trained_run, tmp_path, command, condition):
    cmd, cond = BY_NAME[command], CONDITIONS[condition]
    out = tmp_path / "out"
    cond.prepare(out, trained_run)
    before = _snapshot(tmp_path)
    launcher = cond.launcher(out)
    proc = run_cli(*cmd.works(trained_run, tmp_path), *cmd.output(out), cwd=tmp_path,
                   **({"launcher": launcher} if launcher else {}))
    if condition == "another_commands_records" and cmd.writes_beside_records:
        _assert_refused(proc, 0, before, tmp_path)
        assert _snapshot(tmp_path).keys() > before.keys()  # it did write, beside them
        return
    _assert_refused(proc, cond.exit_code, before, tmp_path)
    assert str(out) in proc.stderr, proc.stderr  # the line names the folder


CRAFTED_CELLS = [(c.name, k) for c in COMMANDS for k in c.crafted]
CRAFTED_DEFAULT = _rotation([c.name for c in COMMANDS if c.crafted], sorted({k for _, k in CRAFTED_CELLS}),
                            per_name=1) & set(CRAFTED_CELLS)


@pytest.mark.parametrize("command, crafted", _grid(CRAFTED_CELLS, CRAFTED_DEFAULT))
def test_crafted_inputs(trained_run, tmp_path, command, crafted):
    cmd = BY_NAME[command]
    given = cmd.crafted[crafted](trained_run, tmp_path)
    before = _snapshot(tmp_path)
    proc = run_cli(*cmd.args(trained_run, tmp_path), *given, *cmd.output(tmp_path / "out"), cwd=tmp_path)
    _assert_refused(proc, 2, before, tmp_path)


NUMERIC_CELLS = [(c.name, f"{key}={value}") for c in COMMANDS for key in c.numeric for value in ("nan", "inf")]
NUMERIC_DEFAULT = {cell for i, cell in enumerate(NUMERIC_CELLS) if i % 4 == 0}


@pytest.mark.parametrize("command, override", _grid(NUMERIC_CELLS, NUMERIC_DEFAULT))
def test_non_finite_numbers(trained_run, tmp_path, command, override):
    cmd = BY_NAME[command]
    out = tmp_path / "out"
    before = _snapshot(tmp_path)
    proc = run_cli(*cmd.works(trained_run, tmp_path), override, *cmd.output(out), cwd=tmp_path)
    _assert_refused(proc, 2, before, tmp_path)
    assert f"{override.split('=')[0]}=" in proc.stderr, proc.stderr
