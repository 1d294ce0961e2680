"""mtlrun.untrusted_files: the bounded reader of YAML / JSON files that mtlrun wrote but anyone may have edited
(issue 21, case 6). In-process: each case is milliseconds."""

from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

from mtlrun import untrusted_files
from mtlrun.errors import UsageError
from mtlrun.untrusted_files import UntrustedFileError, read_json, read_yaml


def alias_bomb(levels: int = 9) -> str:
    """Billion laughs: 10 x 10 x ... references, ~10**levels values once expanded, under 1 KB of text."""
    lines = ["seed: 0", "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    names = "abcdefghijklmnop"
    for i in range(1, levels + 1):
        lines.append(f"{names[i]}: &{names[i]} [{', '.join([f'*{names[i - 1]}'] * 10)}]")
    return "\n".join(lines) + "\n"


def refused(reader, path, **kwargs) -> UntrustedFileError:
    with pytest.raises(UntrustedFileError) as exc:
        reader(path, **kwargs)
    assert isinstance(exc.value, UsageError) and str(path) in str(exc.value)
    return exc.value


def test_an_alias_bomb_is_stopped_before_anything_is_expanded(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(alias_bomb())
    error = refused(read_yaml, path)
    assert error.exit_code == 2 and error.line == 7 and "alias bomb" in error.reason
    assert error.where_why.startswith("config.yaml line 7: expands to more than")


def test_aliases_are_counted(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("a: &a 1\nb: [" + ", ".join(["*a"] * (untrusted_files.MAX_ALIASES + 1)) + "]\n")
    assert "aliases" in refused(read_yaml, path).reason
    path.write_text("a: &a {lr: 1}\nb: *a\n")  # a few aliases are valid YAML and read as such
    assert read_yaml(path) == {"a": {"lr": 1}, "b": {"lr": 1}}


YAML_REFUSED = {
    "cycle": ("a: &a [*a]\n", "a cycle"),
    "a_list": ("- 1\n- 2\n", "holds a list, not a mapping"),
    "empty": ("", "is empty, not a mapping"),
    "python_tag": ("a: !!python/object/apply:os.system ['echo hi']\n", "could not determine a constructor"),
    "duplicate_key": ("a: 1\na: 2\n", "duplicate key a"),
    "deep": ("[" * 150 + "]" * 150, "nested more than 100 levels"),
    "syntax": ("a: [1,\nb: 2\n", "not valid YAML"),
    "huge_integer": ("a: " + "1" * 5000 + "\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(YAML_REFUSED))
def test_bad_yaml_is_one_usage_error_naming_the_file(tmp_path, case):
    text, expected = YAML_REFUSED[case]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    error = refused(read_yaml, path)
    assert expected in error.reason and "\n" not in str(error)


JSON_REFUSED = {
    "nan": ('{"metrics": {"a": 1,\n "b": NaN}}', "line 2: NaN is not a finite number"),
    "infinity": ('{"a": -Infinity}', "line 1: -Infinity is not a finite number"),
    "overflowing_float": ('{"a": 1e400}', "1e400 is not a finite number"),
    "overflowing_integer": ('{"a": ' + "9" * 400 + "}", "is not a finite number"),
    "syntax": ('{"a":\n }', "line 2: not valid JSON: Expecting value"),
    "deep": ("[" * 100000 + "]" * 100000, "nested more than 100 levels"),
    "a_list": ("[1]", "holds a list, not a mapping"),
    "not_utf8": (b"\xff\xfe{}", "is not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(JSON_REFUSED))
def test_bad_json_is_one_usage_error_naming_the_file(tmp_path, case):
    content, expected = JSON_REFUSED[case]
    path = tmp_path / "results.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert expected in str(refused(read_json, path))


def test_non_finite_numbers_can_be_allowed_for_files_whose_writer_records_them(tmp_path):
    path = tmp_path / "export.json"
    path.write_text('{"max_abs_diff": {"weights": Infinity}}')
    assert read_json(path, finite=False) == {"max_abs_diff": {"weights": float("inf")}}


def test_only_a_regular_file_within_the_size_limit_is_read(tmp_path):
    assert refused(read_yaml, tmp_path / "nope.yaml").reason == "no such file"
    assert "is a directory" in refused(read_yaml, tmp_path).reason
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    assert "not a regular file" in refused(read_yaml, fifo).reason
    big = tmp_path / "big.json"
    big.write_text('{"a": "' + "x" * 100 + '"}')
    assert "mtlrun reads at most 50" in refused(read_json, big, max_bytes=50).reason
    link = tmp_path / "link.json"
    link.symlink_to(big)
    assert read_json(link) == {"a": "x" * 100}
    assert "symbolic link" in refused(read_json, link, allow_symlink=False).reason


def test_yaml_reads_as_omegaconf_reads_the_config_it_wrote(tmp_path):
    """The export reader used OmegaConf.load: the values must not change type (1e-3 is a float there, a
    string to plain YAML 1.1)."""
    config = {"optim": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-08}, "seed": 0, "name": "2024-01-01",
              "tasks": {"left": {"_target_": "mtlrun.tasks.Classification", "weight": 1.0, "ok": True}},
              "none": None, "inf": float("inf")}
    path = tmp_path / "config.yaml"
    path.write_text(OmegaConf.to_yaml(config))
    assert read_yaml(path) == OmegaConf.to_container(OmegaConf.load(path)) == config


def test_an_exports_config_yaml_is_read_through_the_bounded_reader(tmp_path):
    from mtlrun.inference.opener import CONFIG, DATA_STATE, WEIGHTS, read_source

    for name in (WEIGHTS, DATA_STATE):
        (tmp_path / name).write_text("{}")
    (tmp_path / CONFIG).write_text(alias_bomb())  # OmegaConf.load expanded this for minutes
    with pytest.raises(UsageError) as exc:
        read_source(tmp_path)
    assert str(exc.value).startswith(f"checkpoint={tmp_path}: config.yaml line 7: expands to more than")
