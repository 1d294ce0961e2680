"""Statements of the docs that are facts about the code, each read from the code: the commands completion
offers, the keys `mtlrun eval` takes, the config groups and their options, where the typed schemas live, what
.ci/run does, that every repository path the docs name exists, and that each run-time picture the docs show
sits next to the command that draws it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from doc_commands import commands, doc_files

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def paragraph(page: str, start: str) -> str:
    """The paragraph of a page that begins with `start` (joined into one line)."""
    text = (DOCS / page).read_text()
    at = text.index(start)
    end = text.find("\n\n", at)
    return " ".join(text[at:end if end >= 0 else None].split())


def spans(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def test_completion_names_every_command_the_cli_has():
    from mtlrun.cli import SUBCOMMANDS

    said = paragraph("getting-started.md", "It completes the command")
    listed = said[:said.index(")")]
    assert set(spans(listed)) == set(SUBCOMMANDS), said


def test_the_keys_eval_accepts_are_those_of_its_config():
    said = paragraph("getting-started.md", "`mtlrun eval` rebuilds the model")
    config = yaml.safe_load((REPO / "configs" / "eval.yaml").read_text())
    keys = {k for k in config if k not in ("defaults", "hydra", "checkpoint")}
    keys = {f"{k}.*" if k == "robustness" else k for k in keys if k not in ("data", "trainer")}
    keys |= {f"{section}.{k}" for section in ("data", "trainer") for k in config[section]}
    assert set(spans(said)) - {"mtlrun eval", "configs/eval.yaml"} == keys, said


def test_the_group_table_names_every_group_and_option():
    """reference/index.md's table: each row's options are exactly the YAMLs of that group."""
    rows = {}
    for line in (DOCS / "reference" / "index.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 3:
            rows[cells[0].strip("`")] = set(re.findall(r"`(\w+)`", cells[1]))
    for group in ("data", "backbone/image", "backbone/text", "backbone/audio", "backbone/tabular", "fusion", "arch",
                  "tasks", "weighting", "optim", "scheduler", "trainer", "logger", "experiment"):
        options = {p.stem for p in (REPO / "configs" / group).glob("*.yaml")}
        assert options <= rows[group], f"{group}: the table misses {sorted(options - rows[group])}"


def test_the_trainer_schema_is_where_the_docs_and_its_yaml_say():
    from mtlrun.engine import trainer_config

    path = Path(trainer_config.__file__).relative_to(REPO).as_posix()
    assert path in paragraph("reference/index.md", "The trainer, optimizer, scheduler and data sections")
    first = (REPO / "configs" / "trainer" / "default.yaml").read_text().splitlines()[0]
    assert path in first and "TrainerConfig" in first, first


def test_ci_does_what_the_development_page_says():
    ci = (REPO / ".ci" / "run").read_text()
    said = paragraph("reference/development.md", "`.ci/run`")
    for step in ('pip install -e ".[dev]"', 'pip install -e ".[all,docs]"', "mkdocs build --strict", "\npytest"):
        assert step in ci, step
    for word in ('.[dev]', '.[all]', "mkdocs build --strict", "pytest"):
        assert word in said, word


def test_every_repository_path_the_docs_name_exists():
    named = set()
    for path in doc_files():
        named |= {m for m in re.findall(r"`((?:mtlrun|configs|tests|benchmarks|examples|docs)/[\w./-]+)`",
                                        path.read_text()) if "X" not in m and "<" not in m}
    missing = sorted(m for m in named if not (REPO / m).exists())
    assert not missing, missing


PRODUCERS = {  # a picture's name: what the command next to it must be
    "curves.png": lambda c: c.command == "train",
    "curves_conflict.png": lambda c: c.command == "train" and "trainer.conflict=true" in c.args,
    "affinity.png": lambda c: c.command == "affinity",
    "report.png": lambda c: c.command == "report",
    "pareto.png": lambda c: c.command == "report" and "--pareto" in c.args,
    "robustness.png": lambda c: c.command == "report" or (c.command == "eval" and any(
        a.startswith("robustness.") for a in c.args)),
}


def test_each_picture_sits_next_to_the_command_that_draws_it():
    """A picture of a run (curves, report, pareto, affinity, robustness) has, within the 25 lines above it,
    the command that draws it; a report's picture, the `mtlrun report` that writes into its folder."""
    documented = commands()
    for path in doc_files():
        name = path.relative_to(REPO).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", line):
                picture = (path.parent / target).resolve()
                rule = PRODUCERS.get(picture.name)
                assert rule, f"{name}:{n}: {picture.name} is not a picture a command draws; add its rule"
                near = [c for c in documented if c.source.startswith(f"{name}:") and
                        n - 25 <= int(c.source.rsplit(":", 1)[1]) <= n + 3 and rule(c)]
                assert near, f"{name}:{n}: no command that draws {picture.name} next to it"
                if picture.name != "curves.png" and picture.name != "curves_conflict.png" and \
                        picture.name != "affinity.png":
                    outs = [(REPO / c.args[c.args.index("--out") + 1]).resolve() for c in near if "--out" in c.args]
                    assert picture.parent in outs, f"{name}:{n}: no `mtlrun report --out` writes {picture}"


def test_the_sample_output_of_mtlrun_train_is_the_same_in_the_readme_and_the_site():
    def sample(text: str) -> str:
        start = text.index("```\n$ mtlrun train\n")
        return text[start:text.index("```\n", start + 4)]

    assert sample((REPO / "README.md").read_text()) == sample((DOCS / "getting-started.md").read_text())


def test_the_readme_counts_the_options_there_are():
    said = " ".join((REPO / "README.md").read_text().split())
    for group, noun in (("fusion", "fusion strategies"), ("arch", "sharing architectures"),
                        ("weighting", "loss-weighting and gradient-aggregation methods")):
        count = len(list((REPO / "configs" / group).glob("*.yaml")))
        assert f"{count} {noun}" in said, f"README: {noun}: configs/{group}/ has {count}"


def test_the_generated_reference_has_every_option_and_typed_key():
    """docs/gen_reference.py (run by the site build) renders every config file and every schema field."""
    import importlib.util
    from dataclasses import fields

    from mtlrun.engine.trainer_config import TrainerConfig

    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = module.render()
    for path in (REPO / "configs").rglob("*.yaml"):
        relative = path.relative_to(REPO / "configs").as_posix()
        if not relative.startswith("hydra/job_logging"):
            assert f"`configs/{relative}`" in page, relative
    for f in fields(TrainerConfig):
        assert f"`trainer.{f.name}" in page, f.name
