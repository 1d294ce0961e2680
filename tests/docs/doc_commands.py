"""The `mtlrun ...` commands the documentation shows, found and checked against the configs without running them.

`commands()` reads every fenced shell block of README.md and docs/**/*.md (line continuations joined,
comments dropped, `torchrun ... -m mtlrun` and `srun mtlrun` included) and every inline `mtlrun ...` code
span. `problems(cmd)` checks one command as its CLI would read it, short of training: the group options
exist, the config composes with the overrides (so a key that does not exist fails, as Hydra fails), and the
composed config passes mtlrun's own validation (mtlrun.validation: types, ranges, `_target_` signatures).
A multirun sweep (`a=1,2`) is checked value by value: the first value is composed with the rest of the
command, each other value of a group is checked to be an option, each other plain value is validated in the
composed config. eval / predict / export read a checkpoint that documentation cannot ship: their own config
is composed (only the keys it declares exist) and their data / trainer values are validated on the train
config. `mtlrun report` is parsed with its own argparse parser.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from contracts import compose_config, config_dir

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
HYDRA_COMMANDS = ("train", "eval", "predict", "export", "affinity")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SHELL = ("", "bash", "sh", "shell", "console")
CODE_SPAN = re.compile(r"``.*?``|`([^`]+)`", re.S)
# Values that stand for something the reader fills in: a checkpoint path, a run dir, a shell variable.
PLACEHOLDER = re.compile(r"\.\.\.|\$|<[^>]*>")
# Plugins a command may need; without them (a plain dev install) their overrides are checked by name only.
PLUGINS = {"hparams_search": "hydra_plugins.hydra_optuna_sweeper", "hydra/launcher": "hydra_plugins.hydra_submitit_launcher"}


@dataclass
class Command:
    source: str  # file:line
    command: str  # train, eval, ...
    args: list[str]
    multirun: bool = False
    config_dirs: list[Path] = field(default_factory=list)
    shown_failing: bool = False  # the docs show it with its error message

    def __str__(self) -> str:
        return f"{self.source}: mtlrun {self.command} {' '.join(self.args)}"


def doc_files() -> list[Path]:
    """README.md and every page of the site, not the reports `mtlrun report` wrote (they hold no commands)."""
    pages = [p for p in sorted((REPO / "docs").rglob("*.md")) if p.name != "report.md"]
    return [REPO / "README.md", *pages]


def shell_lines(text: str) -> list[tuple[int, str, bool]]:
    """(line number, command line, shown failing) of the fenced shell blocks, continuations joined. In a block
    of `$ ` prompts, the other lines are output, and a command whose output starts with `error:` is one the
    docs show failing (the check then asserts that it fails)."""
    found = []
    for block in FENCE.finditer(text):
        if block.group(1) not in SHELL:
            continue
        start = text[:block.start()].count("\n") + 2
        pending, first, lines = "", None, block.group(2).splitlines()
        prompted = any(line.startswith("$ ") for line in lines)
        for offset, line in enumerate(lines):
            first = start + offset if not pending else first
            if prompted and not line.startswith("$ ") and not pending:
                continue  # output
            line = line[2:] if line.startswith("$ ") else line
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            following = lines[offset + 1] if offset + 1 < len(lines) else ""
            found.append((first, pending + line, prompted and following.startswith("error:")))
            pending = ""
    return found


def inline_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) of the inline code spans that are a whole command: `mtlrun train a=1`, not the
    name `mtlrun report` nor `mtlrun affinity [any train overrides]` (words that are not overrides)."""
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    found = []
    for match in CODE_SPAN.finditer(prose):
        span = (match.group(1) or "").replace("\n", " ")
        words = span.split()
        if len(words) > 2 and words[0] == "mtlrun" and words[1] in (*HYDRA_COMMANDS, "report") and \
                (words[1] == "report" or all("=" in w or w.startswith("-") for w in words[2:])):
            found.append((prose[:match.start()].count("\n") + 1, span))
    return found


def parse_line(line: str) -> list[list[str]]:
    """The mtlrun invocations of one shell line: each `mtlrun` (or `-m mtlrun`) and the words after it, up
    to the end of its simple command (`;`, `&&`, `|`)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return []
    runs, current = [], None
    for word in words:
        ends = word.endswith(";") or word in ("&&", "||", "|")
        word = word.rstrip(";")
        if word == "mtlrun":
            current = []
            runs.append(current)
        elif current is not None and word not in ("", "&&", "||", "|"):
            current.append(word)
        if ends:
            current = None
    return runs


def commands() -> list[Command]:
    found = []
    for path in doc_files():
        text = path.read_text()
        name = path.relative_to(REPO).as_posix()
        lines = shell_lines(text) + [(n, line, False) for n, line in inline_commands(text)]
        for number, line, fails in lines:
            for words in parse_line(line):
                cmd = to_command(f"{name}:{number}", words)
                if cmd is not None:
                    cmd.shown_failing = fails
                    found.append(cmd)
    return found


def to_command(source: str, words: list[str]) -> Command | None:
    """A Command from the words after `mtlrun`; None for `mtlrun --help`-like calls that read no config."""
    if not words or words[0].startswith("-"):
        return None
    cmd = Command(source, words[0], [])
    rest = iter(words[1:])
    for word in rest:
        if word in ("-m", "--multirun"):
            cmd.multirun = True
        elif word == "--config-dir":
            cmd.config_dirs.append(REPO / next(rest))
        elif word in ("--cfg", "-c", "--info", "-sc", "--shell-completion"):
            next(rest, None)
        elif word in ("--help", "-h", "--version"):
            continue
        else:
            cmd.args.append(word)
    return cmd


# ---------------------------------------------------------------------------------------------- checking
def all_problems(cmds: list[Command]) -> dict[str, list[str]]:
    """{command: its problems} of every command, composed under one Hydra initialisation: Hydra caches the
    config files it has read per initialisation, which makes a composition several times cheaper than
    tests/contracts.py's compose_config, which initialises Hydra for each."""
    from hydra import initialize_config_dir

    OmegaConf.register_new_resolver("mtlrun_now", lambda fmt: "x", replace=True)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return {str(c): problems(c) for c in cmds}


_composed: dict[tuple, object] = {}


def compose(overrides: list[str], name: str):
    """The composed config (Hydra's compose inside all_problems' initialisation, else compose_config)."""
    from hydra import compose as hydra_compose
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        return compose_config(overrides, name)
    key = (name, tuple(overrides))
    if key not in _composed:
        _composed[key] = hydra_compose(name, overrides=list(overrides))
    return copy.deepcopy(_composed[key])


def problems(cmd: Command) -> list[str]:
    """What is wrong with one documented command: [] when its CLI would accept it."""
    if cmd.command == "report":
        return _report_problems(cmd)
    if cmd.command not in HYDRA_COMMANDS:
        return [f"unknown command {cmd.command!r}"]
    missing = [str(d) for d in cmd.config_dirs if not d.is_dir()]
    if missing:  # a user's own folder (the extending guide's my_configs): tests/cli/test_extending.py runs it
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in cmd.args if not PLACEHOLDER.search(a.split("=", 1)[-1])]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception as e:  # Hydra's parser errors have no common base; the message is what a user sees
        return [f"{' '.join(cmd.args)}: {e}"]
    first, later, found = [], [], []
    for o, text in zip(overrides, args):
        key = o.key_or_group
        if key.startswith("hydra.") or key in ("checkpoint", "resume") or _needs_missing_plugin(key):
            found += _plugin_option_problems(o)
            continue
        if o.is_sweep_override():
            if not cmd.multirun:
                found.append(f"{text}: a sweep needs -m")
            values = _sweep_values(o)
            if values is None:  # an interval for Optuna: the key must exist, any value in it is the sweeper's
                first.append(f"{key}=0.001")  # a number inside any search space the docs show
                continue
            first.append(_as_override(o, values[0]))
            later += [(o, v) for v in values[1:]]
        else:
            first.append(text)
    return found + _compose_problems(cmd, first, later)


def _compose_problems(cmd: Command, first: list[str], later: list) -> list[str]:
    """Compose the command's group choices (as Hydra does, cached), then apply its key overrides as Hydra
    applies command-line overrides, last: a key that does not exist is an error unless added with `+`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mtlrun.errors import MtlrunError

    parsed = OverridesParser.create().parse_overrides(first)
    groups = [(o, text) for o, text in zip(parsed, first) if _is_group(o.key_or_group)]
    global_choice = cmd.config_dirs or any(o.key_or_group in ("experiment", "hparams_search") for o, _ in groups)
    leaves = [(o, text) for o, text in groups if not global_choice and _leaf_option(o)]
    extra = [f"hydra.searchpath=[file://{d}]" for d in cmd.config_dirs]
    composed = [text for o, text in groups if (o, text) not in leaves]
    try:
        cfg = compose([*extra, *composed], cmd.command)
    except Exception as e:  # Hydra's compose errors (unknown option, bad defaults) have no common base
        return [f"{' '.join(composed)}: {type(e).__name__}: {e}"]
    with open_dict(cfg):
        for o, _ in leaves:  # what Hydra does with the choice of an option that has no defaults list of its own
            OmegaConf.update(cfg, o.key_or_group.replace("/", "."), OmegaConf.load(_option_file(o)), merge=False)
    found = []
    for o, text in zip(parsed, first):
        if not _is_group(o.key_or_group):
            found += _set(cfg, o, text)
    if found:
        return found
    if cmd.command not in ("train", "affinity"):  # the checkpoint's config stands in for train's
        cfg = _train_with(cfg)
    try:
        found = validated(cfg)
    except MtlrunError as e:
        found = [str(e)]
    for o, value in later:
        if _is_group(o.key_or_group):
            if not _is_option(o.key_or_group, value, cmd.config_dirs):
                found.append(f"{o.key_or_group}={value}: no such option in configs/{o.key_or_group}/")
            continue
        variant = copy.deepcopy(cfg)
        problems = _set(variant, OverridesParser.create().parse_override(_as_override(o, value)), value)
        found += problems or [p for p in validated(variant) if p not in found]
    return found


_validated: dict[str, list[str]] = {}


def validated(cfg) -> list[str]:
    """mtlrun's validation of a composed config; commands that compose the same config are checked once."""
    from mtlrun.validation import config_problems

    key = OmegaConf.to_yaml(cfg)
    if key not in _validated:
        _validated[key] = list(config_problems(cfg))
    return _validated[key]


def _option_file(o) -> Path:
    return CONFIGS / o.key_or_group / f"{o.value()}.yaml"


def _leaf_option(o) -> bool:
    """A plain `group=option` whose YAML has no defaults list and no package of its own, in a group that is a
    node of the train config (not experiment or hparams_search, which are global): choosing it replaces that
    node by the YAML, so composing it once per command is not needed. The command's other choices (an
    experiment that edits the node afterwards) rule it out."""
    if o.is_add() or o.is_delete() or not isinstance(o.value(), str) or \
            o.key_or_group.split("/")[0] in ("experiment", "hparams_search", "hydra"):
        return False
    path = _option_file(o)
    if not path.is_file():
        return False  # compose says it is not an option
    text = path.read_text()
    return "defaults:" not in text and "@package" not in text


def _is_group(key: str) -> bool:
    return "/" in key or key in _groups()


def _set(cfg, o, text: str) -> list[str]:
    """One key override on a composed config, with Hydra's rules: `+` adds, `~` deletes, a plain override
    must name a key that exists."""
    key = o.key_or_group
    exists = OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT
    if not exists and not o.is_add():
        return [f"{text}: the config has no key '{key}' (add it with '+', or check the name)"]
    with open_dict(cfg):
        if o.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            node.pop(leaf)
        else:
            try:
                OmegaConf.update(cfg, key, o.value(), merge=False, force_add=True)
            except Exception as e:  # OmegaConf refuses the value for this node
                return [f"{text}: {e}"]
    return []


_ABSENT = object()


def _train_with(cmd_cfg) -> object:
    """The default train config with the data / trainer values an eval-like command sets (null = keep)."""
    from mtlrun import schema
    from mtlrun.engine.trainer_config import TrainerConfig

    cfg = compose([], "train")
    typed = {"data": schema.schema_fields(schema.Data), "trainer": schema.schema_fields(TrainerConfig)}
    for section in ("data", "trainer"):
        for key, value in (OmegaConf.to_container(cmd_cfg.get(section) or {}, resolve=False) or {}).items():
            if value is not None and key in typed[section]:
                with open_dict(cfg):
                    OmegaConf.update(cfg, f"{section}.{key}", value, merge=False)
    return cfg


def yaml_value(text: str):
    import yaml

    return yaml.safe_load(text) if text else text


def _groups() -> set[str]:
    return {p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*") if p.is_dir()}


def _is_option(group: str, value: str, config_dirs: list[Path]) -> bool:
    return any((d / group / f"{value}.yaml").is_file() for d in (CONFIGS, *config_dirs))


def _needs_missing_plugin(key: str) -> bool:
    module = next((m for prefix, m in PLUGINS.items() if key.startswith(prefix)), None)
    if module is None:
        return False
    try:
        return importlib.util.find_spec(module) is None
    except ImportError:
        return True


def _plugin_option_problems(o) -> list[str]:
    """A group option given for a plugin (hparams_search=..., hydra/launcher=...) must still be one of ours
    or the plugin's own name."""
    if o.key_or_group in ("hparams_search", "hydra/launcher") and not o.is_sweep_override():
        value = str(o.value())
        if not _is_option(o.key_or_group, value, []) and value not in ("submitit_local", "submitit_slurm", "basic"):
            return [f"{o.key_or_group}={value}: no such option"]
    return []


def _sweep_values(o) -> list[str] | None:
    try:
        return list(o.sweep_string_iterator())
    except Exception:  # an interval or range that is not a list of values (Optuna's search space)
        return None


def _as_override(o, value: str) -> str:
    prefix = "+" if o.is_add() else "~" if o.is_delete() else ""
    return f"{prefix}{o.key_or_group}={value}"


def _report_problems(cmd: Command) -> list[str]:
    from mtlrun.report import parser

    try:
        parser().parse_args(cmd.args)
    except SystemExit:
        return [f"mtlrun report {' '.join(cmd.args)}: not what mtlrun report accepts (mtlrun report --help)"]
    return []
