"""`mtlrun report` reads run dirs that anyone may have edited (issue 21, case 6): a run whose config.yaml or
results.json is not what mtlrun writes is left out as unreadable (which file, why), on stderr and in report.md;
the report exits 0 while one run is readable, 2 naming the folder when none is. Mostly in-process: the loader
is called directly; one CLI run checks the real command's exit code and warning line."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import run_cli
from mtlrun.cli import main as cli_main
from mtlrun.errors import UsageError
from mtlrun.report.groups import IGNORED, Group, group_runs
from mtlrun.report.load import Run, collect_runs, load_run
from mtlrun.report.stats import _build_task, compute_delta, mean_std

CLS = {"_target_": "mtlrun.tasks.Classification", "num_classes": 10, "weight": 1.0, "auxiliary": False}
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


def write_run(path: Path, *, seed=0, tasks=None, metrics=None, config_text=None, results_text=None, **results):
    """A run dir as train writes it (config.yaml + results.json), with the parts a test replaces."""
    path.mkdir(parents=True)
    config = {"seed": seed, "tasks": {"left": CLS, "right": CLS} if tasks is None else tasks,
              "optim": {"_target_": "torch.optim.AdamW", "lr": 0.001}}
    (path / "config.yaml").write_text(config_text if config_text is not None else yaml.safe_dump(config))
    metrics = {"test/left/accuracy": 0.8, "test/right/accuracy": 0.7} if metrics is None else metrics
    (path / "results.json").write_text(results_text if results_text is not None
                                       else json.dumps({"metrics": metrics, **results}))
    return path


def with_right(value) -> dict:
    return {"metrics": {"test/left/accuracy": 0.8, "test/right/accuracy": value}}


SWEEP = {"modality": "image", "noise": "gaussian", "levels": [0, 1], "seed": 0,
         "metrics": {"test/left/accuracy": [0.8, 0.5]}, "auc": {"test/left/accuracy": 0.65}}
# the cases and their like: what write_run gets -> what the reason names
UNREADABLE = {
    "nan": ({"results_text": '{"metrics": {"test/left/accuracy": 0.8,\n "test/right/accuracy": NaN}}'},
            "results.json line 2: NaN is not a finite number"),
    "infinity": ({"results_text": json.dumps(with_right(float("inf")))}, "Infinity is not a finite number"),
    "string": ({"results_text": json.dumps(with_right("0.9"))},
               "metrics['test/right/accuracy'] is the string '0.9', not a number or null"),
    "list": ({"results_text": json.dumps(with_right([0.9]))}, "is a list, not a number or null"),
    "overflowing_std": ({"results_text": json.dumps(with_right(1e308))}, "is 1e+308, beyond the ±1e+100"),
    "true": ({"results_text": json.dumps(with_right(True))}, "is true, not a number or null"),
    "metrics_not_a_mapping": ({"results_text": '{"metrics": [1, 2]}'}, "metrics is a list, not a mapping"),
    "tasks_a_list": ({"tasks": ["left", "right"]}, "config.yaml: tasks is a list, not a mapping of tasks"),
    "seed_a_mapping": ({"seed": {"a": 1}}, "config.yaml: seed is a mapping, not an integer"),
    "alias_bomb": ({"config_text": BOMB}, "config.yaml line 6: expands to more than 1000000 values"),
    "config_a_list": ({"config_text": "- 1\n"}, "config.yaml: holds a list, not a mapping"),
    "sweep_levels": ({"robustness": {**SWEEP, "levels": "0,1"}}, "robustness.levels is not a list of numbers"),
    "sweep_curve": ({"robustness": {**SWEEP, "metrics": {"test/left/accuracy": [0.8]}}},
                    "is not a list of 2 values (one per level)"),
    "sweep_auc": ({"robustness": {**SWEEP, "auc": {"test/left/accuracy": "high"}}}, "robustness.auc"),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_a_run_whose_files_are_not_what_mtlrun_writes_is_unreadable(tmp_path, case):
    given_files, expected = UNREADABLE[case]
    run, reason = load_run(write_run(tmp_path / "run", **given_files), "test")
    assert run is None and reason.startswith("unreadable (") and expected in reason


def test_a_run_as_mtlrun_writes_it_is_read(tmp_path):
    run, _ = load_run(write_run(tmp_path / "run", robustness=SWEEP), "test")
    assert run.metrics == {"left/accuracy": 0.8, "right/accuracy": 0.7} and run.seed == 0
    assert run.robustness == SWEEP and run.tasks == ["left", "right"]


def test_an_alias_bomb_in_hydra_yaml_makes_the_run_unreadable(tmp_path):
    path = write_run(tmp_path / "run")
    (path / ".hydra").mkdir()
    (path / ".hydra" / "hydra.yaml").write_text("hydra: {runtime: {choices: {weighting: *i}}}\n" + BOMB)
    run, reason = load_run(path, "test")
    assert run is None and "hydra.yaml" in reason and "line" in reason


def test_unreadable_runs_are_left_out_with_one_warning_line_each(tmp_path, capsys):
    write_run(tmp_path / "runs" / "0")
    write_run(tmp_path / "runs" / "1", **UNREADABLE["nan"][0])
    write_run(tmp_path / "runs" / "2", **UNREADABLE["alias_bomb"][0])
    runs, failed, skipped = collect_runs([str(tmp_path / "runs")], "test", "DIR")
    assert [r.path.name for r in runs] == ["0"] and not failed
    assert [(s.path.name, s.reason.split(" ")[0]) for s in skipped] == [("1", "unreadable"), ("2", "unreadable")]
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: skipped ") for w in warnings)
    assert "runs/1: unreadable (results.json line 2: NaN" in warnings[0]

    shutil.rmtree(tmp_path / "runs" / "0")
    with pytest.raises(UsageError, match=r"^no readable run under .*runs: 2 run dir\(s\), every one unreadable"):
        collect_runs([str(tmp_path / "runs")], "test", "DIR")


def test_report_md_lists_the_runs_left_out_and_the_report_exits_0(tmp_path, capsys):
    for seed in (0, 1):
        write_run(tmp_path / "runs" / str(seed), seed=seed)
    write_run(tmp_path / "runs" / "2", **UNREADABLE["overflowing_std"][0])
    cli_main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")])  # no SystemExit: exit 0
    markdown = (tmp_path / "rep" / "report.md").read_text()
    assert "## Runs left out (1)" in markdown and "runs/2`: unreadable (results.json: metrics[" in markdown
    assert "nan" not in markdown.lower() and (tmp_path / "rep" / "report.png").is_file()


def test_a_run_config_builds_only_the_task_classes_mtlrun_ships(tmp_path):
    """report builds each task from the run's config for its metric directions; a `_target_` there ran
    whatever it named (builtins.open, os.makedirs, mtlrun's own file writer)."""
    written = tmp_path / "written"
    hostile = {"_target_": "mtlrun.engine.records.atomic_write_text", "_args_": [str(written), "x"]}
    assert _build_task({"tasks": {"left": hostile}}, "left") is None and not written.exists()
    assert _build_task({"tasks": {"left": CLS}}, "left").higher_is_better == {"accuracy": True, "macro_f1": True}


def test_a_delta_m_that_overflows_is_a_note_not_inf(tmp_path):
    def group(value):
        run = Run(tmp_path, {"seed": 0}, {"left/mae": value}, {}, ["left"])
        return Group(runs=[run], leaves={})

    mtl, baseline = group(1e100), group(1e-300)
    mtl.baseline_for = {"left": baseline}
    compute_delta(mtl, {"left/mae": False})
    assert mtl.delta is None and "overflows" in mtl.note


# --------------------------------------------------------------------------- property-based (Hypothesis)
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=12)
METRIC_KEYS = st.sampled_from(["test/left/accuracy", "test/right/mae", "val/left/accuracy", "test/left/loss",
                               "test/x", "test//y", "test"]) | st.text(max_size=10)
RESULTS = JSON | st.fixed_dictionaries({"metrics": st.dictionaries(METRIC_KEYS, JSON, max_size=4)},
                                       optional={"robustness": JSON | st.fixed_dictionaries(
                                           {k: JSON for k in SWEEP})})
CONFIG = JSON | st.fixed_dictionaries({"seed": JSON, "tasks": JSON | st.dictionaries(
    st.sampled_from(["left", "right", "only"]), JSON | st.just(CLS), max_size=3)})


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=CONFIG, results=RESULTS, raw_yaml=st.none() | st.text(max_size=40))
def test_random_run_files_never_crash_the_loader(config, results, raw_yaml):
    """Whatever structure config.yaml and results.json hold, a run is read (and then grouped and averaged) or
    left out with a reason, never an exception."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_run(Path(tmp) / "run", config_text=raw_yaml if raw_yaml is not None else yaml.safe_dump(config),
                         results_text=json.dumps(results))
        run, reason = load_run(path, "test")
        if run is None:
            assert reason.startswith(("unreadable (", "no test metrics")), reason
            return
        for group in group_runs([run, run], IGNORED):
            for key in group.keys():
                mean_std(group.values(key))


# ------------------------------------------------------------------------------------------ the real command
@pytest.mark.e2e
def test_report_cli_warns_about_the_unreadable_run_and_exits_0(trained_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained_run, runs / "0", ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copytree(runs / "0", runs / "1")
    (runs / "1" / "results.json").write_text('{"metrics": {"test/left/accuracy": NaN}}')
    proc = run_cli("report", str(runs), "--out", str(tmp_path / "rep"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0] == (f"warning: skipped {runs / '1'}: unreadable (results.json line 1: NaN is "
                                           f"not a finite number; mtlrun writes strict JSON (null, never NaN or "
                                           f"Infinity))")
    assert "Traceback" not in proc.stderr and "## Runs left out (1)" in (tmp_path / "rep" / "report.md").read_text()
