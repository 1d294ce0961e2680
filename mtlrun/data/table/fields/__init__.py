"""The field types of `data=table`, by the `type:` name a config gives them, and parsing the declared ones.

A new type is one class (a subclass of fields.base.Field, or of FileField for a column of files) in its own
file, and one line in INPUT_TYPES or TARGET_TYPES; nothing else names a type.
"""

from __future__ import annotations

from mtlrun.data.table.fields.audio import AudioField
from mtlrun.data.table.fields.base import REQUIRED, Field, plain
from mtlrun.data.table.fields.binary import BinaryField
from mtlrun.data.table.fields.classification import ClassificationField
from mtlrun.data.table.fields.depth import DepthField
from mtlrun.data.table.fields.detection import DetectionField
from mtlrun.data.table.fields.image import ImageField
from mtlrun.data.table.fields.multilabel import MultilabelField
from mtlrun.data.table.fields.regression import RegressionField
from mtlrun.data.table.fields.segmentation import SegmentationField
from mtlrun.data.table.fields.tabular import TabularField
from mtlrun.data.table.fields.tags import TagsField
from mtlrun.data.table.fields.text import TextField
from mtlrun.schema import RESERVED_TASK_KEYS

# In the order the messages list them; the first of each is the example a malformed entry is shown.
INPUT_TYPES: dict[str, type[Field]] = {
    "image": ImageField,
    "text": TextField,
    "audio": AudioField,
    "tabular": TabularField,
}
TARGET_TYPES: dict[str, type[Field]] = {
    "classification": ClassificationField,
    "binary": BinaryField,
    "multilabel": MultilabelField,
    "regression": RegressionField,
    "segmentation": SegmentationField,
    "depth": DepthField,
    "detection": DetectionField,
    "tags": TagsField,
}


def parse_fields(role: str, node, problems: list[str]) -> list[Field]:
    """The fields declared under data.inputs (role `inputs`) or data.targets, each with its options checked;
    an entry with a problem is left out (its problems are appended)."""
    types = INPUT_TYPES if role == "inputs" else TARGET_TYPES
    node = plain(node)
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
        if not isinstance(kind, str) or kind not in types:  # a list or mapping is unhashable: not a type name
            problems.append(f"{key}.type={kind}: valid {role[:-1]} types: {', '.join(types)}")
            continue
        if role == "targets" and str(name) in RESERVED_TASK_KEYS:
            problems.append(f"{key}: '{name}' is a reserved key of the tasks group; give the target another name")
        defaults = types[kind].defaults
        unknown = [k for k in entry if k != "type" and k not in defaults]
        if unknown:
            problems.append(f"{key}: unknown option(s) {', '.join(map(str, unknown))} for type {kind}; valid: "
                            f"type, {', '.join(defaults)}")
        options = {k: entry.get(k, v) for k, v in defaults.items()}
        missing = [k for k, v in options.items() if v is REQUIRED]
        if missing:
            problems.append(f"{key}: type {kind} needs {', '.join(missing)}")
            continue
        field = types[kind](role, str(name), kind, options)
        before = len(problems)
        field.check(problems)
        if len(problems) == before:
            fields.append(field)
    return fields
