"""The declared inputs and targets of `data=table` and the split: their options, checked before any reading."""

from __future__ import annotations

from dataclasses import dataclass

from mtlrun.checks import is_int, is_real
from mtlrun.data.text import LEVELS, Tokenizer
from mtlrun.schema import RESERVED_TASK_KEYS

REQUIRED = object()
# Options of each type, with their defaults (REQUIRED: no default). `type` is implied everywhere.
INPUT_TYPES = {
    "image": {"column": REQUIRED, "size": None, "channels": 3, "mean": None, "std": None},
    "text": {"column": REQUIRED, "level": "char", "max_len": 64, "min_freq": 1, "lowercase": True},
    "audio": {"column": REQUIRED, "sample_rate": REQUIRED, "num_samples": REQUIRED},
    "tabular": {"numeric": [], "categorical": []},
}
TARGET_TYPES = {
    "classification": {"column": REQUIRED, "unknown": "error"},
    "binary": {"column": REQUIRED, "positive": None, "unknown": "error"},
    "multilabel": {"column": REQUIRED, "sep": "|", "none": None, "unknown": "error"},
    "regression": {"column": None, "columns": None, "standardize": False},
    "segmentation": {"column": REQUIRED, "num_classes": REQUIRED, "ignore_index": 255, "size": None},
    "depth": {"column": REQUIRED, "png_scale": 0.001, "size": None},
}
FILE_TYPES = ("image", "audio", "segmentation", "depth")
LABEL_TYPES = ("classification", "binary", "multilabel")
UNKNOWN = ("error", "missing")


def _plain(value):
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


# ----------------------------------------------------------------------------------------- declared fields
@dataclass
class FieldSpec:
    """One declared input or target: its type, the column(s) it reads and its options (defaults filled)."""

    role: str  # inputs | targets
    name: str
    type: str
    options: dict

    @property
    def key(self) -> str:
        return f"data.{self.role}.{self.name}"

    @property
    def columns(self) -> list[str]:
        o = self.options
        if self.type == "tabular":
            return [*o["numeric"], *o["categorical"]]
        if self.type == "regression" and o.get("columns") is not None:
            return list(o["columns"])
        return [o["column"]]

    @property
    def column(self) -> str:
        return self.columns[0]


def _parse_fields(role: str, node, problems: list[str]) -> list[FieldSpec]:
    types = INPUT_TYPES if role == "inputs" else TARGET_TYPES
    node = _plain(node)
    if node is None or node == {}:
        return []
    if not isinstance(node, dict):
        problems.append(f"data.{role}: must map names to {{type: ..., column: ...}}, got {node!r}")
        return []
    fields = []
    for name, entry in node.items():
        key = f"data.{role}.{name}"
        if not isinstance(entry, dict):
            problems.append(f"{key}: must be a mapping such as {{type: {next(iter(types))}, column: <column>}}, "
                            f"got {entry!r}")
            continue
        kind = entry.get("type")
        if kind not in types:
            problems.append(f"{key}.type={kind}: valid {role[:-1]} types: {', '.join(types)}")
            continue
        if role == "targets" and str(name) in RESERVED_TASK_KEYS:
            problems.append(f"{key}: '{name}' is a reserved key of the tasks group; give the target another name")
        defaults = types[kind]
        unknown = [k for k in entry if k != "type" and k not in defaults]
        if unknown:
            problems.append(f"{key}: unknown option(s) {', '.join(map(str, unknown))} for type {kind}; valid: "
                            f"type, {', '.join(defaults)}")
        options = {k: entry.get(k, v) for k, v in defaults.items()}
        missing = [k for k, v in options.items() if v is REQUIRED]
        if missing:
            problems.append(f"{key}: type {kind} needs {', '.join(missing)}")
            continue
        spec = FieldSpec(role, str(name), kind, options)
        before = len(problems)
        _check_options(spec, problems)
        if len(problems) == before:
            fields.append(spec)
    return fields


def _check_options(f: FieldSpec, problems: list[str]) -> None:
    o, key = f.options, f.key

    def need(cond, option, what):
        if not cond:
            problems.append(f"{key}.{option}={o[option]!r}: {what}")

    def is_size(v):
        return v is None or (isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(s) and s >= 1 for s in v))

    def is_column(v):
        return isinstance(v, str) and v.strip() != ""

    if "column" in o and o["column"] is not None:
        need(is_column(o["column"]), "column", "must be a column name")
    if f.type == "image":
        need(is_size(o["size"]), "size", "must be null (the first training image's size) or [H, W] of ints >= 1")
        need(o["channels"] in (1, 3), "channels", "must be 1 (grey) or 3 (RGB)")
        for option in ("mean", "std"):
            v = o[option]
            ok = v is None or (isinstance(v, (list, tuple)) and len(v) in (1, o["channels"])
                               and all(is_real(x) for x in v))
            need(ok, option, "must be null or a list of 1 or `channels` numbers")
        if isinstance(o["std"], (list, tuple)) and any(is_real(x) and x <= 0 for x in o["std"]):
            problems.append(f"{key}.std={o['std']}: every value must be > 0")
    elif f.type == "text":
        try:
            Tokenizer(level=o["level"], max_len=o["max_len"], min_freq=o["min_freq"], lowercase=o["lowercase"])
        except (TypeError, ValueError) as exc:
            problems.append(f"{key}: {exc} (levels: {', '.join(LEVELS)})")
    elif f.type == "audio":
        need(is_int(o["sample_rate"]) and o["sample_rate"] >= 1, "sample_rate", "must be an integer >= 1 (Hz)")
        need(is_int(o["num_samples"]) and o["num_samples"] >= 1, "num_samples",
             "must be an integer >= 1 (clips are cut or zero-padded to it)")
    elif f.type == "tabular":
        for option in ("numeric", "categorical"):
            v = o[option]
            need(isinstance(v, (list, tuple)) and all(is_column(c) for c in v), option,
                 "must be a list of column names")
        if not (o["numeric"] or o["categorical"]):
            problems.append(f"{key}: a tabular input needs numeric: [...] and/or categorical: [...] columns")
    elif f.type in LABEL_TYPES:
        need(o["unknown"] in UNKNOWN, "unknown", f"valid: {', '.join(UNKNOWN)} (what a val/test label that the "
                                                 f"train split never has becomes)")
        if f.type == "multilabel":
            need(isinstance(o["sep"], str) and o["sep"] != "", "sep", "must be a non-empty separator string")
            need(o["none"] is None or isinstance(o["none"], (str, bool)), "none",
                 "must be null or the cell text that means an empty label set")
        if f.type == "binary" and isinstance(o["positive"], (list, dict)):
            problems.append(f"{key}.positive={o['positive']!r}: must be null or one label value")
    elif f.type == "regression":
        if (o["column"] is None) == (o["columns"] is None):
            problems.append(f"{key}: give exactly one of column: <name> or columns: [<name>, ...]")
        elif o["columns"] is not None:
            need(isinstance(o["columns"], (list, tuple)) and o["columns"] and all(is_column(c) for c in o["columns"]),
                 "columns", "must be a non-empty list of column names")
        need(isinstance(o["standardize"], bool), "standardize",
             "must be true (targets as (value - train mean) / train std) or false (raw values)")
    elif f.type == "segmentation":
        need(is_int(o["num_classes"]) and o["num_classes"] >= 2, "num_classes", "must be an integer >= 2")
        need(o["ignore_index"] is None or (is_int(o["ignore_index"]) and o["ignore_index"] >= 0), "ignore_index",
             "must be null or the pixel value (>= 0) that marks ignored pixels (255 by default)")
        need(is_size(o["size"]), "size", "must be null (the image input's size) or [H, W] of ints >= 1")
    elif f.type == "depth":
        need(is_real(o["png_scale"]) and o["png_scale"] > 0, "png_scale",
             "must be a number > 0 (16-bit PNG value x png_scale = depth; 0.001: millimetres to metres)")
        need(is_size(o["size"]), "size", "must be null (the image input's size) or [H, W] of ints >= 1")


def _parse_split(split, problems: list[str]) -> dict:
    split = _plain(split)
    if split is None:
        return {"column": "split"}
    if not isinstance(split, dict) or set(split) - {"column", "ratios", "seed"} \
            or ("column" in split) == ("ratios" in split):
        problems.append(f"data.split={split!r}: give {{column: <name>}} (a column of train / val / test) or "
                        f"{{ratios: [train, val, test], seed: 0}}")
        return {}
    if "column" in split:
        if "seed" in split:
            problems.append("data.split.seed: only used with ratios")
        if not isinstance(split["column"], str) or not split["column"].strip():
            problems.append(f"data.split.column={split['column']!r}: must be a column name")
        return split
    ratios, seed = split["ratios"], split.get("seed", 0)
    if not isinstance(ratios, (list, tuple)) or len(ratios) != 3 or not all(is_real(r) and r >= 0 for r in ratios) \
            or not all(r > 0 for r in ratios):
        problems.append(f"data.split.ratios={ratios!r}: must be three numbers > 0 (train, val, test), e.g. "
                        f"[0.8, 0.1, 0.1]; they are normalised to sum to 1")
    if not is_int(seed) or seed < 0:
        problems.append(f"data.split.seed={seed!r}: must be an integer >= 0")
    return {"ratios": ratios, "seed": seed}
