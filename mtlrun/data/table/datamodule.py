"""`Table`, the DataModule of `data=table`: checks the config, then reads, fits and builds through the builder."""

from __future__ import annotations

import io
from pathlib import Path

from torch.utils.data import Dataset

from mtlrun.checks import is_real
from mtlrun.data.base import DataModule, DataSpec
from mtlrun.data.table.builder import _Builder, _Prepared
from mtlrun.data.table.dataset import Augment
from mtlrun.data.table.fields import _parse_fields, _parse_split, _plain
from mtlrun.data.table.manifest import SUFFIXES
from mtlrun.errors import ConfigError, UsageError

VALIDATE = ("files", "full")


# ----------------------------------------------------------------------------------------- the data module
class Table(DataModule):
    """Your own data from a manifest; see the module docstring and configs/data/table.yaml."""

    name = "table"

    def __init__(self, path: str | None = None, root: str | None = None, inputs=None, targets=None, split=None,
                 validate: str = "files", cache: bool = False, augment=None, encoding: str = "utf-8",
                 allow_outside_root: bool = False, **loader):
        super().__init__(**loader)
        problems: list[str] = []
        if not isinstance(path, str) or not path.strip():
            problems.append(f"data.path={path!r}: give the manifest, a .csv or .jsonl file (.parquet with pyarrow), "
                            f"e.g. data.path=data/manifest.csv (see examples/README.md)")
        elif Path(path).suffix.lower() not in SUFFIXES:
            problems.append(f"data.path={path}: unknown format {Path(path).suffix or '(no suffix)'}; valid: "
                            f"{', '.join(SUFFIXES)}")
        elif not Path(path).expanduser().is_file():
            problems.append(f"data.path={path}: no such file (looked for {Path(path).expanduser().resolve()}; "
                            f"relative paths start at the current directory)")
        self.inputs = _parse_fields("inputs", inputs, problems)
        self.targets = _parse_fields("targets", targets, problems)
        if not self.inputs and not _plain(inputs):
            problems.append("data.inputs: declare at least one input, e.g. {image: {type: image, column: path}}")
        if not self.targets and not _plain(targets):
            problems.append("data.targets: declare at least one target, e.g. {label: {type: classification, "
                            "column: label}}")
        self.split = _parse_split(split, problems)
        if validate not in VALIDATE:
            problems.append(f"data.validate={validate!r}: valid: files (cells parsed, every file exists), full "
                            f"(also decodes every file)")
        if not isinstance(cache, bool):
            problems.append(f"data.cache={cache!r}: must be true or false")
        if not isinstance(allow_outside_root, bool):
            problems.append(f"data.allow_outside_root={allow_outside_root!r}: must be true or false")
        if not _is_text_encoding(encoding):
            problems.append(f"data.encoding={encoding!r}: not a text encoding Python knows; e.g. utf-8, latin-1, "
                            f"cp1252, utf-16")
        self.augment = _parse_augment(augment, problems)
        if self.augment and not any(f.type == "image" for f in self.inputs):
            problems.append("data.augment: flips and crops act on images; this data has no image input")
        if problems:
            raise ConfigError(problems)
        self.path = str(Path(path).expanduser())
        self.root = Path(root).expanduser() if root else Path(self.path).parent
        self.validate, self.cache = validate, cache
        self.encoding, self.allow_outside_root = encoding, allow_outside_root
        self._loaded: dict | None = None
        self._prepared: _Prepared | None = None

    # ------------------------------------------------------------------ DataModule interface
    @property
    def full_spec(self) -> DataSpec:
        return self._prepare().spec

    def build(self) -> dict[str, Dataset]:
        return dict(self._prepare().splits)

    def state_dict(self) -> dict:
        return self._prepare().state

    def load_state_dict(self, state: dict) -> None:
        expected = {"classes", "categories", "numeric", "tokenizers", "sizes", "targets"}
        if isinstance(state, dict) and set(state) == expected - {"targets"}:
            state = {**state, "targets": {}}  # written before regression targets could be standardised
        if not isinstance(state, dict) or set(state) != expected:
            raise UsageError(f"data=table: the checkpoint's data state has keys {sorted(state or {})}, expected "
                             f"{sorted(expected)}; it was not written by this data module")
        self._loaded = state
        self._prepared = None

    # ------------------------------------------------------------------ reading and validation
    def _prepare(self) -> _Prepared:
        if self._prepared is None:
            self._prepared = _Builder(self).run()
        return self._prepared


def _is_text_encoding(name) -> bool:
    try:
        io.TextIOWrapper(io.BytesIO(), encoding=name)  # what open() takes: no hex or base64 codecs
    except (LookupError, TypeError):
        return False
    return isinstance(name, str)  # None would mean the locale's encoding


def _parse_augment(node, problems: list[str]) -> Augment:
    node = _plain(node) or {}
    if not isinstance(node, dict) or set(node) - {"hflip", "crop_scale"}:
        problems.append(f"data.augment={node!r}: valid keys: hflip (true/false), crop_scale (null or [lo, hi])")
        return Augment()
    hflip, scale = node.get("hflip", False), node.get("crop_scale")
    if not isinstance(hflip, bool):
        problems.append(f"data.augment.hflip={hflip!r}: must be true or false")
        hflip = False
    if scale is not None:
        if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and all(is_real(s) for s in scale)
                and 0 < scale[0] <= scale[1] <= 1):
            problems.append(f"data.augment.crop_scale={scale!r}: must be null or [lo, hi] with 0 < lo <= hi <= 1 "
                            f"(the fraction of the area a random crop keeps)")
            scale = None
        else:
            scale = (float(scale[0]), float(scale[1]))
    return Augment(hflip, scale)
