"""Shell completion: Hydra's `-sc install=bash` script completes the `mtlrun` command by calling
`mtlrun -sc query=bash` with the line in COMP_LINE; mtlrun completes the subcommand, then the subcommand's
Hydra app completes groups, options and keys (mtlrun/cli.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contracts import cli_env, run_cli

pytestmark = pytest.mark.e2e  # each query is a CLI process, as in the shell


def query(line: str, *command: str, cwd: Path, shell: str = "bash") -> list[str]:
    proc = run_cli(*command, "-sc", f"query={shell}", cwd=cwd, env={"COMP_LINE": line})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split()


@pytest.mark.parametrize("command", [(), ("train",)], ids=["mtlrun", "mtlrun train"])
def test_a_group_option_completes_from_the_subcommands_config(tmp_path, command):
    assert query("mtlrun train weighting=u", *command, cwd=tmp_path) == ["weighting=upgrad", "weighting=uw"]


def test_the_subcommand_then_its_keys_and_groups(tmp_path):
    assert query("mtlrun ", cwd=tmp_path) == ["train", "eval", "predict", "export", "affinity", "report", "--help",
                                              "--version"]
    assert query("mtlrun e", cwd=tmp_path) == ["eval", "export"]
    assert query("mtlrun affinity affinity.gr", cwd=tmp_path) == ["affinity.groups="]  # affinity's own config
    assert query("mtlrun eval spl", cwd=tmp_path) == ["split="]  # eval's own config
    assert query("mtlrun train hparams_search=", cwd=tmp_path) == [
        "hparams_search=famo", "hparams_search=static_weights", "hparams_search=weighting_lr"]
    assert query("mtlrun train trainer.max_ep", cwd=tmp_path) == ["trainer.max_epochs="]
    assert query("mtlrun report ou", cwd=tmp_path) == []  # no config: the shell completes file names
    assert query("mtlrun e", cwd=tmp_path, shell="fish") == ["eval", "export"]


@pytest.mark.parametrize("command", [(), ("train",), ("eval",)], ids=["mtlrun", "train", "eval"])
def test_install_registers_the_mtlrun_command(tmp_path, command):
    proc = run_cli(*command, "-sc", "install=bash", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "-sc query=bash" in proc.stdout
    assert proc.stdout.rstrip().endswith("complete -o nospace -o default -F hydra_bash_completion mtlrun")


def test_bash_completes_through_the_installed_script(tmp_path):
    """docs/getting-started.md's `eval "$(mtlrun -sc install=bash)"`, then what bash does on TAB."""
    script = Path(sys.executable).parent / "mtlrun"
    bash = shutil.which("bash")
    if bash is None or not script.is_file():
        pytest.skip("needs bash and the installed `mtlrun` script")
    tab = ('eval "$(mtlrun -sc install=bash)"\n'
           'COMP_LINE="mtlrun train weighting=u"; COMP_POINT=${#COMP_LINE}; COMP_CWORD=2\n'
           'hydra_bash_completion; echo "${COMPREPLY[@]}"\n'
           'COMP_LINE="mtlrun tr"; COMP_POINT=${#COMP_LINE}; COMP_CWORD=1\n'
           'hydra_bash_completion; echo "${COMPREPLY[@]}"\n')
    env = cli_env({"PATH": f"{script.parent}:{cli_env()['PATH']}"})
    proc = subprocess.run([bash, "-c", tab], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["weighting=upgrad weighting=uw", "train"]
