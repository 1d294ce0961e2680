"""Every `mtlrun ...` command that README.md and docs/ show is one its CLI accepts: a renamed key, a removed
option or a value that no longer validates breaks this test, not a reader (tests/docs/doc_commands.py)."""

from __future__ import annotations

import pytest

from doc_commands import Command, all_problems, commands, parse_line, shell_lines, to_command

BROKEN = {  # each a command the check must refuse, and why it is wrong
    "train trainer.maxepochs=3": "a misspelt key",
    "train weighting=nope": "an option that does not exist",
    "train optim.lr=-1": "a value out of range",
    "train -m weighting=static,nope seed=0,1": "a bad option in the second value of a sweep",
    "train -m trainer.max_epochs=2,0": "a bad plain value in the second value of a sweep",
    "train weighting=static,uw": "a sweep without -m",
    "eval checkpoint=x optim.lr=0.1": "a key eval does not take",
    "eval checkpoint=x data.batch_size=0": "a bad value eval takes",
    "affinity affinity.stepz=3": "a misspelt key of affinity",
    "report outputs/x --paretto a b": "a flag report does not have",
}


@pytest.fixture(scope="module")
def documented() -> list[Command]:
    return commands()


@pytest.fixture(scope="module")
def checked(documented) -> dict[str, list[str]]:
    broken = [to_command(f"broken:{n}", text.split()) for n, text in enumerate(BROKEN)]
    return all_problems([*documented, *broken])


def test_the_docs_show_commands_of_every_kind(documented):
    """The search finds the commands where they are: the README's quick start, the pages, every command."""
    sources = {c.source.split(":")[0] for c in documented}
    assert "README.md" in sources and "docs/howto/own-data.md" in sources and "docs/tagging.md" in sources
    assert {c.command for c in documented} >= {"train", "eval", "predict", "export", "affinity", "report"}
    assert any(c.multirun for c in documented) and any(c.config_dirs for c in documented)


def test_every_documented_command_is_accepted(documented, checked):
    bad = {str(c): checked[str(c)] for c in documented if not c.shown_failing and checked[str(c)]}
    assert not bad, "\n".join(f"{cmd}\n    " + "\n    ".join(p) for cmd, p in bad.items())


def test_a_command_the_docs_show_failing_fails(documented, checked):
    """`$ mtlrun train trainer.max_epochs=-1 ...` followed by its `error:` output must still be an error."""
    failing = [c for c in documented if c.shown_failing]
    assert failing
    for c in failing:
        assert checked[str(c)], f"{c}: the docs show it failing, but it is accepted"


@pytest.mark.parametrize("text", BROKEN)
def test_the_check_refuses_a_broken_command(checked, text):
    n = list(BROKEN).index(text)
    assert checked[str(to_command(f"broken:{n}", text.split()))], f"accepted: {BROKEN[text]}"


def test_line_continuations_comments_and_launchers():
    text = ("```bash\nmtlrun train -m seed=0,1 \\\n    optim.lr=1e-3   # a comment\n"
            "torchrun --nproc_per_node=2 -m mtlrun train trainer.device=cpu; mtlrun report out\n```\n")
    lines = shell_lines(text)
    assert [(n, fails) for n, _, fails in lines] == [(2, False), (4, False)]
    assert parse_line(lines[0][1]) == [["train", "-m", "seed=0,1", "optim.lr=1e-3"]]
    assert parse_line(lines[1][1]) == [["train", "trainer.device=cpu"], ["report", "out"]]
