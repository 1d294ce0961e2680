"""Read back a YAML or JSON file that mtlrun wrote but that anyone may have edited since: a run dir's
config.yaml / results.json / .hydra/hydra.yaml, an export's config.yaml / export.json / data_state.json.

Such a file is data from a possibly untrusted source (docs/architecture.md), so reading it is bounded:
- a size limit, checked before the file is read (and a FIFO or device is never opened);
- YAML through a safe loader (OmegaConf's, so values parse as they were written) that counts aliases and
  measures the document as it would be expanded *before* building any Python object from it: an alias
  bomb (`b: [*a, *a, ...]` nested a few levels) is stopped in milliseconds instead of expanding to
  billions of nodes in whatever walks it next (OmegaConf, a flatten, a str());
- a nesting limit, so later recursive code cannot hit Python's recursion limit;
- JSON without NaN / Infinity (and without numbers too large for a float): mtlrun writes strict JSON
  (null where nothing was measured), so such a token means the file was not written by mtlrun.

Every problem is an UntrustedFileError (a UsageError: exit 2) naming the file, the line where known, and
what is wrong; `.reason` is the message without the file, for callers that list several files.
Never feed the raw file to OmegaConf.load / yaml.load elsewhere: read it here, then OmegaConf.create().
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path

from mtlrun.errors import UsageError

MAX_YAML_BYTES = 256 * 2**10  # a resolved config is a few KB; the safe loader parses ~60 KB/s at worst
MAX_JSON_BYTES = 64 * 2**20  # results.json is small; an export's data_state.json may hold a vocabulary
MAX_ALIASES = 1000  # YAML `*name` references; mtlrun itself writes none
MAX_NODES = 1_000_000  # values in the document once every alias is expanded
MAX_DEPTH = 100  # nesting of mappings / lists; a resolved config is ~6 deep


class UntrustedFileError(UsageError):
    """A file read back that is not what mtlrun writes (exit 2), or that cannot be read (exit 1)."""

    def __init__(self, path, reason: str, line: int | None = None, exit_code: int = 2):
        self.path, self.reason, self.line, self.exit_code = Path(path), reason, line, exit_code
        where = f" line {line}" if line else ""
        super().__init__(f"{path}{where}: {reason}")

    @property
    def where_why(self) -> str:
        """`<file name> line N: reason`, for a message that already names the folder."""
        return f"{self.path.name}{f' line {self.line}' if self.line else ''}: {self.reason}"


def describe(value) -> str:
    """What a value is, in a user's words: `a list`, `the string 'abc'`, `true`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    return f"{type(value).__name__} {value!r}"[:60]


def read_text(path, max_bytes: int, allow_symlink: bool = True) -> str:
    """The file's UTF-8 text; refuses anything but a regular file of at most `max_bytes`."""
    path = Path(path)
    try:
        if not allow_symlink and path.is_symlink():
            raise UntrustedFileError(path, f"is a symbolic link (to {os.readlink(path)}); mtlrun writes a "
                                           f"regular file here")
        info = os.stat(path)  # before open(): opening a FIFO would wait forever
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise UntrustedFileError(path, f"is {kind}; mtlrun writes a regular file here")
        if info.st_size > max_bytes:
            raise UntrustedFileError(path, f"is {info.st_size} bytes; mtlrun reads at most {max_bytes} from it")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat
    except FileNotFoundError:
        raise UntrustedFileError(path, "no such file") from None
    except OSError as exc:
        raise UntrustedFileError(path, f"cannot be read ({exc.strerror or exc})", exit_code=1) from None
    if len(data) > max_bytes:
        raise UntrustedFileError(path, f"is over {max_bytes} bytes; mtlrun reads at most that from it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UntrustedFileError(path, f"is not UTF-8 text (byte {exc.start})", line) from None


def _expect(path, value, expect):
    if expect is not None and not isinstance(value, expect):
        wanted = {dict: "a mapping", list: "a list"}.get(expect, expect.__name__)
        found = "is empty" if value is None else f"holds {describe(value)}"
        raise UntrustedFileError(path, f"{found}, not {wanted}")
    return value


# --- YAML ----------------------------------------------------------------------------------------------

class _Limit(Exception):
    def __init__(self, reason: str, mark=None):
        super().__init__(reason)
        self.reason, self.line = reason, (mark.line + 1 if mark is not None else None)


_LOADER = None


def _loader_class():
    """OmegaConf's loader (a yaml.SafeLoader: no Python tags; floats as OmegaConf writes them), bounded."""
    global _LOADER
    if _LOADER is None:
        import yaml
        from omegaconf._utils import get_yaml_loader

        class BoundedLoader(get_yaml_loader()):
            aliases = depth = 0

            def compose_node(self, parent, index):
                if self.check_event(yaml.AliasEvent):
                    self.aliases += 1
                    if self.aliases > MAX_ALIASES:
                        raise _Limit(f"more than {MAX_ALIASES} aliases (*name); mtlrun writes none",
                                     self.peek_event().start_mark)
                self.depth += 1
                try:
                    if self.depth > MAX_DEPTH:
                        raise _Limit(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
                    return super().compose_node(parent, index)
                finally:
                    self.depth -= 1

        _LOADER = BoundedLoader
    return _LOADER


def _expanded_size(node, sizes: dict, open_nodes: set) -> int:
    """Values in `node` once its aliases are expanded; each node is measured once, so this is fast even
    for a bomb. Recursion is bounded by MAX_DEPTH (checked while composing)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise _Limit("an alias refers to a node that contains it (a cycle)", node.start_mark)
    open_nodes.add(key)
    children = node.value if isinstance(node.value, list) else []
    size = 1
    for child in children:
        for part in (child if isinstance(child, tuple) else (child,)):  # mapping items are (key, value)
            size += _expanded_size(part, sizes, open_nodes)
            if size > MAX_NODES:
                raise _Limit(f"expands to more than {MAX_NODES} values (an alias bomb?)", node.start_mark)
    open_nodes.discard(key)
    sizes[key] = size
    return size


def read_yaml(path, expect: type | None = dict, max_bytes: int = MAX_YAML_BYTES, allow_symlink: bool = True):
    """The YAML document in `path` as plain Python (dicts, lists, scalars); `expect`: its required type
    (None: anything, an empty file included)."""
    import yaml

    text = read_text(path, max_bytes, allow_symlink)
    loader = None
    try:
        loader = _loader_class()(text)  # its reader refuses control characters already here
        node = loader.get_single_node()
        if node is not None:
            _expanded_size(node, {}, set())
        value = loader.construct_document(node) if node is not None else None
    except _Limit as exc:
        raise UntrustedFileError(path, exc.reason, exc.line) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise UntrustedFileError(path, f"not valid YAML: {exc.problem or exc.context}",
                                 mark.line + 1 if mark is not None else None) from None
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:  # e.g. a 5000-digit integer
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UntrustedFileError(path, f"not valid YAML: {first.split(';')[0]}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return _expect(path, value, expect)


# --- JSON ----------------------------------------------------------------------------------------------

class _NotStrict(ValueError):
    def __init__(self, token: str):
        super().__init__(token)
        self.token = token


def _refuse_constant(token: str):
    raise _NotStrict(token)


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _NotStrict(token)
    return value


def _int_in_float_range(token: str) -> int:
    value = int(token)
    if abs(value) > 1.7976931348623157e308:  # float() of it would overflow wherever it is used
        raise _NotStrict(token)
    return value


def _line_of(text: str, token: str) -> int | None:
    """The line of the first `token` outside a string (a good guess: json does not report where)."""
    pattern = re.compile(r'"(?:[^"\\]|\\.)*"|(' + re.escape(token) + r")(?![\w.])")
    for match in pattern.finditer(text):
        if match.group(1):
            return text.count("\n", 0, match.start()) + 1
    return None


def _check_depth(value, path, depth: int = 1) -> None:
    if depth > MAX_DEPTH:
        raise UntrustedFileError(path, f"nested more than {MAX_DEPTH} levels deep")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        if isinstance(child, (dict, list)):
            _check_depth(child, path, depth + 1)


def read_json(path, expect: type | None = dict, max_bytes: int = MAX_JSON_BYTES, allow_symlink: bool = True,
              finite: bool = True):
    """The JSON document in `path`. `finite`: the file is strict JSON (results.json), so NaN, Infinity and
    numbers beyond a float's range are refused; False for a file whose writer may record them (export.json's
    max_abs_diff, a data_state.json)."""
    text = read_text(path, max_bytes, allow_symlink)
    hooks = dict(parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_int_in_float_range)
    try:
        value = json.loads(text, **(hooks if finite else {}))
    except _NotStrict as exc:
        token = exc.token if len(exc.token) <= 24 else exc.token[:21] + "..."
        raise UntrustedFileError(path, f"{token} is not a finite number; mtlrun writes strict JSON "
                                       f"(null, never NaN or Infinity)", _line_of(text, exc.token)) from None
    except json.JSONDecodeError as exc:
        raise UntrustedFileError(path, f"not valid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
    except RecursionError:
        raise UntrustedFileError(path, f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise UntrustedFileError(path, f"not valid JSON: {str(exc).split(';')[0]}") from None
    _check_depth(value, path)
    return _expect(path, value, expect)
