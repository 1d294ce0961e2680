"""The configuration reference, written from the code at every docs build (a MkDocs hook, see mkdocs.yml).

Nothing here is copied: each command's config, each config group with its options and each option's keys
come from configs/ (a key's default is its value in the YAML, its comment the YAML comment on or above it),
and the typed sections (trainer, optim, scheduler, data) add the type and valid range their schemas declare
(mtlrun/engine/trainer_config.py, mtlrun/schema.py): the same text a bad value's error message prints. A
renamed key or a new option is in the reference the next time the site is built.
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Union, get_args, get_origin

import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
COMMANDS = ("train", "eval", "predict", "export", "affinity")
PAGE = "reference/configs.md"


def schemas() -> dict[str, type]:
    """The typed sections, by their key in the train config."""
    if str(REPO) not in sys.path:  # the build may run from a checkout that is not installed
        sys.path.insert(0, str(REPO))
    from mtlrun import schema
    from mtlrun.engine.trainer_config import TrainerConfig

    return {"trainer": TrainerConfig, "optim": schema.Optim, "scheduler": schema.Scheduler, "data": schema.Data}


def yaml_keys(path: Path) -> list[tuple[str, str, str]]:
    """(dotted key, value as written, comment) of every leaf key of a config file, in file order.

    Read line by line because a YAML loader drops the comments, which are the keys' documentation: a key's
    comment is the one at the end of its line, else the block of comment lines right above it. Flow values
    (`[a, b]`, `{k: v}`) are one leaf; block lists under a key are shown as the key's value.
    """
    rows, stack, above, inline_at = [], [], [], -1
    lines = path.read_text().splitlines()
    for n, raw in enumerate(lines):
        text = raw.strip()
        if not text:
            above, inline_at = ([""] * len(above) if n == len(above) and not rows else []), -1
            continue
        if text.startswith("#"):
            if n == len(above) and not rows:  # the file's header comment: the option's, shown above its table
                above.append("")
                continue
            if rows and raw.index("#") == inline_at:  # an end-of-line comment that goes on below its key
                rows[-1] = (*rows[-1][:2], f"{rows[-1][2]} {text.lstrip('#').strip()}")
            else:
                above.append(text.lstrip("#").strip())
            continue
        inline_at = -1
        if text.startswith("- ") or ":" not in text:
            above = []
            continue
        indent = len(raw) - len(raw.lstrip())
        key, _, rest = text.partition(":")
        value, _, comment = _split_comment(rest)
        stack = [(i, k) for i, k in stack if i < indent]
        dotted = ".".join([k for _, k in stack] + [key.strip()])
        inline_at = raw.index("#", len(raw) - len(rest)) if comment else -1
        comment = comment or " ".join(a for a in above if a)
        above = []
        if value:
            rows.append((dotted, value, comment))
        elif _block_list(lines, n, indent):
            rows.append((dotted, _block_list(lines, n, indent), comment))
        else:
            stack.append((indent, key.strip()))
            if comment:
                rows.append((dotted, "", comment))
    return [r for r in rows if not r[0].startswith(("defaults", "hydra"))]


def _split_comment(rest: str) -> tuple[str, str, str]:
    """`value  # comment` -> (value, '#', comment); a # inside quotes or brackets is part of the value."""
    depth, quote = 0, ""
    for i, ch in enumerate(rest):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "#" and depth == 0 and (i == 0 or rest[i - 1].isspace()):
            return rest[:i].strip(), "#", rest[i + 1:].strip()
    return rest.strip(), "", ""


def _block_list(lines: list[str], n: int, indent: int) -> str:
    """A key followed by `- item` lines: the items as a flow list."""
    items = []
    for raw in lines[n + 1:]:
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        if len(raw) - len(raw.lstrip()) < indent or not text.startswith("- "):
            break
        items.append(_split_comment(text[2:])[0])
    return f"[{', '.join(items)}]" if items else ""


def value_type(value: str) -> str:
    """The type of a value as YAML reads it (what a command-line override of the key should look like)."""
    if value in ("", "???"):
        return "required" if value == "???" else ""
    try:
        loaded = yaml.safe_load(value)
    except yaml.YAMLError:
        return "str"
    return {type(None): "null", bool: "bool", int: "int", float: "float", str: "str", list: "list",
            dict: "mapping"}.get(type(loaded), type(loaded).__name__)


def schema_rows(schema: type, prefix: str) -> list[tuple[str, str, str, str, str]]:
    """(key, default, type, valid, doc) of every field of a typed schema, nested ones flattened."""
    rows = []
    for f in fields(schema):
        key = f"{prefix}.{f.name}"
        if is_dataclass(f.type):
            rows += schema_rows(f.type, key)
            continue
        default = f.default if f.default is not MISSING else "(from the option's YAML)"
        typ = type_name(f.type)
        rows.append((key, "(from the option's YAML)" if default is None and not f.metadata["null"]
                     else _show(default), typ, valid(f), f.metadata["doc"]))
    return rows


def type_name(annotation) -> str:
    """`int or null` for Optional[int], `int, float or null` for Union[int, float, None]."""
    if get_origin(annotation) is Union:
        names = [type_name(a) for a in get_args(annotation) if a is not type(None)]
        names += ["null"] if type(None) in get_args(annotation) else []
        return ", ".join(names[:-1]) + " or " + names[-1]
    return getattr(annotation, "__name__", str(annotation))


def valid(f) -> str:
    """What the schema accepts: a rule's own message (what it prints for a bad value), else the bounds."""
    from mtlrun.schema import RULES, valid_text

    return RULES[f.metadata["rule"]](object()) if f.metadata["rule"] else valid_text(f)


def _show(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def groups() -> dict[str, list[Path]]:
    """Every config group (a folder of configs/ holding YAMLs, nested ones as `backbone/image`) and its options."""
    found = {}
    for folder in sorted(p for p in CONFIGS.rglob("*") if p.is_dir()):
        group = folder.relative_to(CONFIGS).as_posix()
        options = sorted(folder.glob("*.yaml"))
        if options and not group.startswith("hydra/job_logging"):
            found[group] = options
    return found


def cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def code(text: str) -> str:
    return f"`{cell(text)}`" if text else ""


def key_table(rows, typed: dict[str, tuple]) -> list[str]:
    out = ["| key | default | type | valid | comment |", "| --- | --- | --- | --- | --- |"]
    for key, value, comment in rows:
        schema = typed.get(key)
        typ, valid = (schema[2], schema[3]) if schema else (value_type(value), "")
        out.append(f"| {code(key)} | {code(value)} | {cell(typ)} | {cell(valid)} | {cell(comment)} |")
    return out


def render() -> str:
    typed_sections = schemas()
    typed = {row[0]: row for section, schema in typed_sections.items() for row in schema_rows(schema, section)}
    out = ["# Configuration reference", "",
           "Generated from `configs/` and the typed schemas (`mtlrun/engine/trainer_config.py`, `mtlrun/schema.py`)",
           "by `docs/gen_reference.py` at every build of this site: a key's default is its value in the YAML, its",
           "comment the YAML comment on or above it, and for the typed sections its type and valid range are what",
           "the schema declares (a bad value is refused with that text, before anything is built).", "",
           "## Commands", ""]
    for command in COMMANDS:
        out += [f"### `mtlrun {command}`", "", f"`configs/{command}.yaml`", ""]
        out += key_table(yaml_keys(CONFIGS / f"{command}.yaml"), typed) + [""]
    out += ["`mtlrun report DIR [DIR ...]` takes no config: `mtlrun report --help` lists its options.", "",
            "## Typed sections", "",
            "Every key of these sections is checked before anything is built, all problems listed at once (exit 2).",
            "The trainer's schema is closed (an unknown key is refused); optim, scheduler and data are open: their",
            "other keys are whatever the `_target_` takes.", ""]
    for section, schema in typed_sections.items():
        out += [f"### `{section}` schema", "", cell((schema.__doc__ or "").strip().splitlines()[0]) if section != "trainer"
                else "The trainer (`configs/trainer/default.yaml`).", "",
                "| key | default | type | valid | meaning |", "| --- | --- | --- | --- | --- |"]
        out += [f"| {code(k)} | {code(d)} | {cell(t)} | {cell(v)} | {cell(doc)} |"
                for k, d, t, v, doc in schema_rows(schema, section)] + [""]
    out += ["## Config groups", "",
            "Pick an option with `group=option` (`backbone/image=resnet18`); override its keys with",
            "`group.key=value` (`weighting.lr=0.01`; a nested group's keys are dotted: `backbone.image.width=64`).", ""]
    for group, options in groups().items():
        out += [f"### `{group}`", "", "Options: " + ", ".join(f"`{p.stem}`" for p in options) + ".", ""]
        for path in options:
            prefix = package(path, group)
            rows = [(f"{prefix}.{k}" if prefix else k, v, c) for k, v, c in yaml_keys(path)]
            out += [f"#### `{group}={path.stem}`", "", f"`configs/{group}/{path.name}`", ""]
            header = _header_comment(path)
            out += ([header, ""] if header else []) + (key_table(rows, typed) if rows else ["(no keys of its own)"])
            out += [""]
    return "\n".join(out) + "\n"


def package(path: Path, group: str) -> str:
    """Where an option's keys land in the composed config: its `# @package` line, else the group's path."""
    for raw in path.read_text().splitlines():
        if raw.startswith("# @package "):
            name = raw.split()[-1]
            return "" if name == "_global_" else name
    return group.replace("/", ".")


def _header_comment(path: Path) -> str:
    """The comment block a config file starts with: what the option is (its paper, its cost)."""
    lines = []
    for raw in path.read_text().splitlines():
        if not raw.startswith("#"):
            break
        if not raw.startswith("# @package"):
            lines.append(raw.lstrip("#").strip())
    return cell(" ".join(lines))


def on_files(files, config):
    """MkDocs hook: add the generated page to the site (nothing is written into docs/)."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files


if __name__ == "__main__":
    print(render())
