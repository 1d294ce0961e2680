"""Δm% (mtlrun.metrics.delta_m) and `mtlrun report` on hand-made run dirs, plus one real sweep end to end."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml

from contracts import TINY, read_results, run_cli
from mtlrun.cli import main as cli_main
from mtlrun.metrics import delta_m

# ------------------------------------------------------------------------------------------------ delta_m


def test_delta_m_sign_convention_negative_means_mtl_beats_stl():
    assert delta_m({"acc": 0.9}, {"acc": 0.8}, {"acc": True}) == pytest.approx(-12.5)  # higher acc: better
    assert delta_m({"acc": 0.7}, {"acc": 0.8}, {"acc": True}) == pytest.approx(12.5)
    assert delta_m({"mae": 2.0}, {"mae": 2.5}, {"mae": False}) == pytest.approx(-20.0)  # lower error: better
    assert delta_m({"mae": 3.0}, {"mae": 2.5}, {"mae": False}) == pytest.approx(20.0)
    assert delta_m({"acc": 0.8, "mae": 1.0}, {"acc": 0.8, "mae": 1.0}, {"acc": True, "mae": False}) == 0.0


def test_delta_m_mixed_directions_by_hand():
    higher = {"acc": True, "f1": True, "mae": False}
    # acc: -(0.72 - 0.80) / 0.80 = +0.10; f1: -(0.66 - 0.60) / 0.60 = -0.10; mae: (1.3 - 1.0) / 1.0 = +0.30
    value = delta_m({"acc": 0.72, "f1": 0.66, "mae": 1.3}, {"acc": 0.80, "f1": 0.60, "mae": 1.0}, higher)
    assert value == pytest.approx(100 * (0.10 - 0.10 + 0.30) / 3)
    # better on one task, equally worse on the other: they cancel
    assert delta_m({"acc": 0.88, "mae": 1.1}, {"acc": 0.8, "mae": 1.0}, {"acc": True, "mae": False}) == \
        pytest.approx(0.0, abs=1e-12)


def test_delta_m_errors():
    with pytest.raises(ValueError, match="same metric keys.*baseline lacks \\['b'\\]"):
        delta_m({"a": 1.0, "b": 1.0}, {"a": 1.0}, {"a": True, "b": True})
    with pytest.raises(ValueError, match="higher_is_better has extra \\['c'\\]"):
        delta_m({"a": 1.0}, {"a": 1.0}, {"a": True, "c": True})
    with pytest.raises(ValueError, match="baseline of 'a' is 0"):
        delta_m({"a": 1.0}, {"a": 0.0}, {"a": True})
    with pytest.raises(ValueError, match="no metrics"):
        delta_m({}, {}, {})


# --------------------------------------------------------------------------------------- fake run dirs
CLS = {"_target_": "mtlrun.tasks.Classification", "num_classes": 10, "weight": 1.0, "auxiliary": False}
SUM = {"_target_": "mtlrun.tasks.Regression", "dim": 1, "loss": "mse", "weight": 1.0, "auxiliary": True}
WEIGHTINGS = {"static": "mtlrun.weighting.static.StaticWeighting", "pcgrad": "mtlrun.weighting.pcgrad.PCGrad"}


def fake_run(path, *, seed, metrics, weighting="static", only=None, tasks=None, lr=0.002, choices=True):
    """A run dir in the contract format: config.yaml, results.json (test and val), .hydra/hydra.yaml."""
    path.mkdir(parents=True)
    tasks = tasks or {"left": CLS, "right": CLS, "sum": SUM}
    config = {"seed": seed, "resume": None,
              "data": {"_target_": "mtlrun.data.multidigits.MultiDigits", "n_train": 10000, "num_workers": 0},
              "arch": {"_target_": "mtlrun.models.arch.hps.HardParameterSharing", "head_hidden": 0},
              "tasks": {"only": only, **tasks},
              "weighting": {"_target_": WEIGHTINGS[weighting]},
              "optim": {"_target_": "torch.optim.AdamW", "lr": lr},
              "trainer": {"max_epochs": 8, "device": "cpu"}}
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    values = {f"{split}/{k}": v for k, v in metrics.items() for split in ("test", "val")}
    values.update({f"test/{k.split('/')[0]}/loss": 1.0 for k in metrics})
    (path / "results.json").write_text(json.dumps({"metrics": values, "best_epoch": 3}))
    if choices:
        (path / ".hydra").mkdir()
        hydra = {"hydra": {"runtime": {"choices": {"weighting": weighting, "arch": "hps", "tasks": "multidigits",
                                                   "hydra/job_logging": "mtlrun"}}}}
        (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    return path


def cls(task, acc, f1=None):
    return {f"{task}/accuracy": acc, f"{task}/macro_f1": acc if f1 is None else f1}


@pytest.fixture
def runs(tmp_path):
    """Two methods x 3 seeds, an auxiliary `sum` task, and single-task runs of left and right (2 seeds)."""
    multirun = tmp_path / "multirun"
    for seed, left in enumerate((0.86, 0.88, 0.90)):
        fake_run(multirun / str(seed), seed=seed, weighting="static",
                 metrics={**cls("left", left, 0.88), **cls("right", 0.77), "sum/mae": 2.0, "sum/rmse": 2.5})
    for seed in range(3):
        fake_run(multirun / str(seed + 3), seed=seed, weighting="pcgrad",
                 metrics={**cls("left", 0.76), **cls("right", 0.735), "sum/mae": 9.0, "sum/rmse": 9.0})
    stl = tmp_path / "stl"
    for seed, (acc, f1) in enumerate(((0.78, 0.75), (0.82, 0.85))):
        fake_run(stl / str(seed), seed=seed, only=["left"], metrics=cls("left", acc, f1))
        fake_run(stl / str(seed + 2), seed=seed, only=["right"], metrics=cls("right", 0.70))
    return tmp_path


def report(*argv, capsys=None):
    cli_main(["report", *map(str, argv)])
    return capsys.readouterr() if capsys else None


def read_csv(path):
    return {row["method"]: row for row in csv.DictReader(path.open())}


def test_report_mean_std_delta_m_and_outputs(runs, capsys):
    out = report(runs / "multirun", runs / "stl", "--out", runs / "rep", capsys=capsys)
    md = (runs / "rep" / "report.md").read_text()
    assert out.out.startswith(md)  # printed too
    rows = read_csv(runs / "rep" / "report.csv")
    assert list(rows) == ["weighting=static", "weighting=pcgrad", "STL left", "STL right"]

    static = rows["weighting=static"]
    assert (static["kind"], static["runs"], static["seeds"], static["auxiliary"]) == ("mtl", "3", "0,1,2", "sum")
    assert float(static["left/accuracy"]) == pytest.approx(0.88)
    assert float(static["left/accuracy std"]) == pytest.approx(0.02)  # sample std of .86 .88 .90
    assert float(static["sum/mae"]) == pytest.approx(2.0) and static["right/accuracy std"] == "0"
    # STL: left .80 (acc) / .80 (f1), right .70 -> every metric of static is 10 % better: Δm% = -10;
    # per seed -9.375, -10, -10.625 (left accuracy .86 .88 .90): std 0.625. `sum` is auxiliary: left out
    # (there is no STL run of sum, so including it would leave Δm% undefined).
    assert float(static["delta_m"]) == pytest.approx(-10.0)
    assert float(static["delta_m std"]) == pytest.approx(0.625)
    # pcgrad: left 5 % worse (+5), right 5 % better (-5): Δm% = 0
    assert float(rows["weighting=pcgrad"]["delta_m"]) == pytest.approx(0.0, abs=1e-9)
    stl_left = rows["STL left"]
    assert (stl_left["kind"], stl_left["seeds"]) == ("baseline", "0,1")
    assert float(stl_left["left/accuracy"]) == pytest.approx(0.80) and stl_left["right/accuracy"] == ""
    assert stl_left["delta_m"] == ""

    # Markdown: one row per group, mean ± std, arrows, aux marked, the Δm% column and the runs
    assert "| method | seeds | left/accuracy ↑ | left/macro_f1 ↑ | right/accuracy ↑ | right/macro_f1 ↑ | " \
           "sum/mae ↓ (aux) | sum/rmse ↓ (aux) | Δm% ↓ |" in md
    assert "| weighting=static | 0,1,2 | 0.8800 ± 0.0200 | 0.8800 ± 0.0000 | 0.7700 ± 0.0000 |" in md
    assert "| -10.00 ± 0.6" in md and "| +0.00 ± 0.00 |" in md
    assert "| STL left | 0,1 | 0.8000 ± 0.0283 | 0.8000 ± 0.0707 | - | - | - | - |  |" in md
    assert "baselines of weighting=static: left: STL left, right: STL right" in md
    assert "negative means the multi-task model beats single-task training" in md
    assert str(runs / "multirun" / "0") in md and str(runs / "stl" / "3") in md
    assert (runs / "rep" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_with_explicit_stl_and_default_out(runs, capsys):
    report(runs / "multirun", "--stl", runs / "stl", capsys=capsys)  # default --out: the first DIR
    rows = read_csv(runs / "multirun" / "report.csv")
    assert list(rows) == ["weighting=static", "weighting=pcgrad", "STL left", "STL right"]
    assert float(rows["weighting=static"]["delta_m"]) == pytest.approx(-10.0)
    assert (runs / "multirun" / "report.md").is_file() and (runs / "multirun" / "report.png").is_file()


def test_report_val_split_labels_from_config_and_missing_baselines(tmp_path, capsys):
    # no .hydra dirs: groups are told apart by the config keys that differ; no single-task runs: no Δm%
    for seed in range(2):
        for lr in (0.001, 0.002):
            fake_run(tmp_path / f"lr{lr}" / f"s{seed}", seed=seed, lr=lr, choices=False,
                     metrics={**cls("left", 0.5 + lr * 100 + seed / 100), **cls("right", 0.5)})
    out = report(tmp_path, "--split", "val", capsys=capsys)
    rows = read_csv(tmp_path / "report.csv")
    assert list(rows) == ["optim.lr=0.001", "optim.lr=0.002"]
    assert float(rows["optim.lr=0.002"]["left/accuracy"]) == pytest.approx(0.705)
    assert rows["optim.lr=0.001"]["delta_m"] == ""
    assert "# mtlrun report (val split)" in out.out and "Δm%" not in out.out.split("\n\n")[1]
    assert "no single-task baselines, so no Δm%" in out.out
    assert "no baseline for" not in out.out  # one note for all groups, not one per group


def test_report_labels_a_config_without_the_group_as_none(tmp_path, capsys):
    """Single-modality runs (`~fusion`: no fusion node) next to fused runs: `fusion=none` vs `fusion=Concat`."""
    for seed in range(2):
        for name, fusion, modalities in (("fused", {"_target_": "mtlrun.models.fusion.Concat", "dim": 128}, None),
                                         ("image", None, ["image"])):
            run = fake_run(tmp_path / name / f"s{seed}", seed=seed, choices=False,
                           metrics={**cls("left", 0.9 if fusion else 0.5), **cls("right", 0.5)})
            config = yaml.safe_load((run / "config.yaml").read_text())
            config["data"]["modalities"] = modalities
            if fusion:
                config["fusion"] = fusion
            (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    report(tmp_path, capsys=capsys)
    rows = read_csv(tmp_path / "report.csv")
    assert set(rows) == {"fusion=Concat data.modalities=null", "fusion=none data.modalities=[image]"}
    assert float(rows["fusion=Concat data.modalities=null"]["left/accuracy"]) == pytest.approx(0.9)


def test_report_aux_only_excluded_when_auxiliary(runs, capsys):
    # the same numbers with `sum` made a main task and an STL run of sum: now it counts in Δm%
    main_sum = {**SUM, "auxiliary": False}
    tasks = {"left": CLS, "right": CLS, "sum": main_sum}
    for seed in range(2):
        fake_run(runs / "main" / str(seed), seed=seed, tasks=tasks,
                 metrics={**cls("left", 0.88), **cls("right", 0.77), "sum/mae": 2.0, "sum/rmse": 2.0})
        fake_run(runs / "stl" / f"sum{seed}", seed=seed, only=["sum"], tasks=tasks,
                 metrics={"sum/mae": 2.5, "sum/rmse": 2.5})
    report(runs / "main", "--stl", runs / "stl", "--out", runs / "rep", capsys=capsys)
    row = read_csv(runs / "rep" / "report.csv")["arch=hps weighting=static"]
    # four metrics -10 % each; mae and rmse (2.0 vs 2.5) -20 % each; were sum left out, it would be -10
    assert row["auxiliary"] == ""
    assert float(row["delta_m"]) == pytest.approx((4 * -10 - 20 - 20) / 6)


@pytest.mark.parametrize("case", ["missing", "empty", "no_shared", "wrong_split"])
def test_report_errors_exit_2_without_traceback(tmp_path, capsys, case):
    if case == "missing":
        args, expected = [tmp_path / "nope"], "nope: no such directory"
    elif case == "empty":
        (tmp_path / "empty" / "sub").mkdir(parents=True)
        args, expected = [tmp_path / "empty"], "no runs found under"
    elif case == "no_shared":
        fake_run(tmp_path / "a", seed=0, metrics={**cls("left", 0.5), **cls("right", 0.5)})
        other = {"age": {**SUM, "auxiliary": False}, "mood": CLS}
        fake_run(tmp_path / "b", seed=0, tasks=other, metrics={"age/mae": 1.0, **cls("mood", 0.4)})
        args, expected = [tmp_path], "share no test metric"
    else:
        run = fake_run(tmp_path / "a", seed=0, metrics=cls("left", 0.5))
        (run / "results.json").write_text(json.dumps({"metrics": {"val/left/accuracy": 0.5}}))
        args, expected = [tmp_path, "--split", "test"], "has test metrics"
    with pytest.raises(SystemExit) as exc:
        report(*args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: " in err and expected in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------- end to end
@pytest.mark.e2e
def test_stl_sweep_mtl_run_and_report_end_to_end(tmp_path, seed_sweep):
    tiny = [o for o in TINY if not o.startswith("experiment=")]
    proc = run_cli("train", "-m", "experiment=[smoke,stl_baselines]", *tiny,
                   f"hydra.sweep.dir={tmp_path / 'stl'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for job, task in ((0, "left"), (1, "right")):  # one single-task run per task
        assert {k.split("/")[1] for k in read_results(tmp_path / "stl" / str(job))} == {task}
    mtl_run = seed_sweep / "0"  # the multi-task run: TINY at the default seed, like the single-task runs

    proc = run_cli("report", str(mtl_run), "stl", "--out", "rep", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = read_csv(tmp_path / "rep" / "report.csv")
    assert list(rows) == ["arch=hps weighting=static", "STL left", "STL right"]
    mtl = read_results(mtl_run)
    stl = {**read_results(tmp_path / "stl" / "0"), **read_results(tmp_path / "stl" / "1")}
    keys = [f"test/{t}/{m}" for t in ("left", "right") for m in ("accuracy", "macro_f1")]
    if all(stl[k] > 0 for k in keys):  # a tiny run can score 0 macro-F1; then Δm% is rightly undefined
        expected = delta_m({k: mtl[k] for k in keys}, {k: stl[k] for k in keys}, dict.fromkeys(keys, True))
        assert float(rows["arch=hps weighting=static"]["delta_m"]) == pytest.approx(expected, rel=1e-4)
        assert "Δm% ↓" in (tmp_path / "rep" / "report.md").read_text()
    assert math.isclose(float(rows["STL left"]["left/accuracy"]), stl["test/left/accuracy"], rel_tol=1e-5)
    assert (tmp_path / "rep" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_labels_name_the_choice_and_the_values_that_differ(tmp_path, capsys):
    for name, weighting, lr in (("a", "static", 0.001), ("b", "static", 0.002), ("c", "pcgrad", 0.001)):
        fake_run(tmp_path / name, seed=0, weighting=weighting, lr=lr,
                 metrics={**cls("left", 0.5), **cls("right", 0.5)})
    report(tmp_path, capsys=capsys)
    assert list(read_csv(tmp_path / "report.csv")) == [
        "weighting=static optim.lr=0.001", "weighting=static optim.lr=0.002", "weighting=pcgrad optim.lr=0.001"]


def test_report_null_metrics_are_missing_runs_not_zeros(tmp_path, capsys):
    # `right` has no label in the reported split for one seed of static and every run of pcgrad (results.json
    # null): the mean is over the runs that measured it (n shown), a run without it has no Δm%, and a group
    # none of whose runs measured it shows "–" and no Δm%; a baseline without a measurement gives no Δm%.
    none = dict.fromkeys(cls("right", 0), None)
    for seed, right in enumerate((cls("right", 0.77), cls("right", 0.77), none)):
        fake_run(tmp_path / "mtl" / str(seed), seed=seed, metrics={**cls("left", 0.88), **right, "sum/mae": 2.0})
        fake_run(tmp_path / "mtl" / str(seed + 3), seed=seed, weighting="pcgrad",
                 metrics={**cls("left", 0.80), **none, "sum/mae": 2.0})
    for seed in range(2):
        fake_run(tmp_path / "stl" / str(seed), seed=seed, only=["left"], metrics=cls("left", 0.80))
        fake_run(tmp_path / "stl" / str(seed + 2), seed=seed, only=["right"], metrics=cls("right", 0.70))
    report(tmp_path / "mtl", "--stl", tmp_path / "stl", "--out", tmp_path / "rep", capsys=capsys)
    md = (tmp_path / "rep" / "report.md").read_text()
    rows = read_csv(tmp_path / "rep" / "report.csv")
    static, pcgrad = rows["weighting=static"], rows["weighting=pcgrad"]
    assert float(static["right/accuracy"]) == pytest.approx(0.77) and static["runs"] == "3"
    assert "| weighting=static | 0,1,2 | 0.8800 ± 0.0000 | 0.8800 ± 0.0000 | 0.7700 ± 0.0000 (n=2) |" in md
    # Δm% of seeds 0 and 1 only (left and right 10 % better): never from a 0 put in for the missing run
    assert float(static["delta_m"]) == pytest.approx(-10.0)
    assert "| -10.00 ± 0.00 (n=2) |" in md
    assert "Δm% of weighting=static: over 2 of 3 runs: the others have no measurement of right/accuracy" in md
    assert pcgrad["right/accuracy"] == "" and pcgrad["delta_m"] == ""
    assert "Δm% of weighting=pcgrad: not computed: no run has a measurement of every metric (missing: " \
           "right/accuracy, right/macro_f1)" in md
    assert "| weighting=pcgrad | 0,1,2 | 0.8000 ± 0.0000 | 0.8000 ± 0.0000 | – | – |" in md
    assert "–: no measurement (null in results.json" in md

    for seed in range(2):  # the right baseline without a measurement: no Δm% for anyone
        results = tmp_path / "stl" / str(seed + 2) / "results.json"
        payload = json.loads(results.read_text())
        payload["metrics"].update({k: None for k in payload["metrics"] if k.startswith("test/right/")})
        results.write_text(json.dumps(payload))
    report(tmp_path / "mtl", "--stl", tmp_path / "stl", "--out", tmp_path / "rep2", capsys=capsys)
    md = (tmp_path / "rep2" / "report.md").read_text()
    assert read_csv(tmp_path / "rep2" / "report.csv")["weighting=static"]["delta_m"] == ""
    assert ("Δm% of weighting=static: not computed: the baseline has no measurement of right/accuracy, "
            "right/macro_f1 (null)") in md

# ------------------------------------------------------------------------ significance and the Pareto view

def test_paired_test_and_interval_equal_the_t_formulas():
    from scipy.stats import t

    from mtlrun.report.significance import confidence_interval, paired_test

    values, reference = {0: 0.90, 1: 0.92, 2: 0.95, 7: 0.5}, {0: 0.88, 1: 0.91, 2: 0.90}
    result = paired_test(values, reference)  # seed 7 has no partner: left out
    diffs = [0.02, 0.01, 0.05]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    stat = mean / (sd / math.sqrt(3))
    assert (result.n, result.difference) == (3, pytest.approx(mean))
    assert result.p_value == pytest.approx(2 * t.sf(abs(stat), 2))
    low, high = confidence_interval(diffs)
    half = t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert (low, high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert paired_test({0: 1.0}, {1: 1.0}) is None and confidence_interval([1.0]) is None
    assert paired_test({0: 1.0}, {0: 0.5}).p_value is None  # one seed: no test


def test_pareto_front_follows_each_metrics_direction():
    from mtlrun.report.pareto import pareto_front

    points = [(0.9, 3.0), (0.8, 2.0), (0.85, 3.5), (0.7, 2.5), (0.9, 3.0)]
    # accuracy up, MAE down: (0.85, 3.5) is beaten by (0.9, 3.0); (0.7, 2.5) by (0.8, 2.0); ties both stay
    assert pareto_front(points, (True, False)) == [0, 1, 4]
    assert pareto_front(points, (True, True)) == [0, 2, 4]


def test_report_tests_against_static_and_draws_the_pareto_front(runs, capsys):
    from scipy.stats import ttest_rel

    out = report(runs / "multirun", runs / "stl", "--out", runs / "rep", "--pareto", "left/accuracy",
                 "right/accuracy", capsys=capsys)
    md = (runs / "rep" / "report.md").read_text()
    assert "## Against weighting=static (paired by seed)" in md
    row = next(line for line in md.splitlines() if line.startswith("| weighting=pcgrad | -0.1200"))
    p_left = ttest_rel([0.76] * 3, [0.86, 0.88, 0.90]).pvalue
    assert f"-0.1200 (p={p_left:.3f}, n=3)" in row
    # Δm% per seed: static -9.375, -10, -10.625; pcgrad 0 -> +10 on average
    p_delta = ttest_rel([0.0] * 3, [-9.375, -10.0, -10.625]).pvalue
    assert row.endswith(f"+10.0000 (p={p_delta:.3f}, n=3)* |")
    assert "- Δm% of weighting=static: 95% CI [-11.55, -8.45] over 3 seeds" in md
    assert "## Pareto front: left/accuracy ↑ vs right/accuracy ↑" in md
    assert "- weighting=static: 0.8800, 0.7700" in md and "Dominated: weighting=pcgrad." in md
    assert (runs / "rep" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pareto.png" in out.out.splitlines()[-1]


def test_report_refuses_an_unknown_reference_or_pareto_metric(runs, capsys):
    with pytest.raises(SystemExit) as exc:
        report(runs / "multirun", "--reference", "weighting=nope", capsys=capsys)
    assert exc.value.code == 2
    assert "--reference weighting=nope: no group has that label" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        report(runs / "multirun", "--pareto", "left/accuracy", "left/nope", capsys=capsys)
    assert exc.value.code == 2 and "left/nope is not a metric of the runs" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- report.png, robustness.png
def errorbars(ax, first) -> dict[str, tuple[float, float | None]]:
    """{group row label: (mean, half-width of its error bar or None)} of one report.png panel (the labels are
    on the first panel of its row of panels, `first`)."""
    labels = {tick: text.get_text() for tick, text in zip(first.get_yticks(), first.get_yticklabels())}
    found = {}
    for container in ax.containers:
        point, _, bars = container.lines
        (x,), (y,) = point.get_xdata(), point.get_ydata()
        half = (bars[0].get_segments()[0][1][0] - bars[0].get_segments()[0][0][0]) / 2 if bars else None
        found[labels.get(y, y)] = (x, half)
    return found


def test_report_figure_points_with_seed_error_bars_every_metric(runs, capsys):
    import matplotlib.pyplot as plt

    from mtlrun.report import main as report_main
    from mtlrun.report.figures import build_report_figure
    from mtlrun.report.stats import metric_columns

    result = report_main([str(runs / "multirun"), str(runs / "stl"), "--out", str(runs / "rep")])
    columns, directions = metric_columns([*result["mtl"], *result["baselines"]])
    fig = build_report_figure(result["mtl"], result["baselines"], columns, directions, {"sum"}, split="test")
    try:
        axes = {ax.get_title(): ax for ax in fig.axes if ax.axison}
        assert list(axes) == ["left/accuracy ↑", "left/macro_f1 ↑", "right/accuracy ↑", "right/macro_f1 ↑",
                              "sum/mae ↓ (aux)", "sum/rmse ↓ (aux)", "Δm% ↓ vs single-task"]
        # the group labels (with n) are on the first panel of each row of panels
        assert [t.get_text() for t in axes["left/accuracy ↑"].get_yticklabels()] == [
            "weighting=static (n=3)", "weighting=pcgrad (n=3)", "STL left (n=2)", "STL right (n=2)"]
        first = axes["left/accuracy ↑"]
        acc = errorbars(first, first)
        assert acc["weighting=static (n=3)"] == pytest.approx((0.88, 0.02))  # sample std of .86 .88 .90
        assert acc["weighting=pcgrad (n=3)"][0] == pytest.approx(0.76)
        assert acc["STL left (n=2)"] == pytest.approx((0.80, 0.02 * 2 ** 0.5))
        assert "STL right (n=2)" not in acc  # no left metric: no point
        for title, ax in axes.items():
            lo, hi = ax.get_xlim()
            for mean, half in errorbars(ax, first).values():
                assert lo < mean - (half or 0) and mean + (half or 0) < hi, title
            if title.startswith("Δm%"):
                assert lo < 0 < hi and errorbars(ax, first)["weighting=static (n=3)"] == pytest.approx((-10.0, 0.625))
            else:  # points, not bars: the axis spans the data and says when it does not start at 0
                assert ("axis not from 0" in ax.get_xlabel()) == (not lo <= 0 <= hi), title
                assert ("higher is better" if "↑" in title else "lower is better") in ax.get_xlabel()
        # one dot per seed below its group's point
        seeds = [ln for ln in axes["left/accuracy ↑"].get_lines() if ln.get_marker() == "."]
        assert sorted(x for ln in seeds for x in ln.get_xdata()) == pytest.approx([0.76] * 3 + [0.78, 0.82, 0.86,
                                                                                   0.88, 0.90])
    finally:
        plt.close(fig)


def test_report_figure_title_clears_the_panels_of_a_tall_report(runs, capsys):
    """14 groups x 13 panels (multidigits_hard's report): tight_layout alone put the figure's title over the
    first row's panel titles."""
    import dataclasses

    import matplotlib.pyplot as plt

    from mtlrun.report import main as report_main
    from mtlrun.report.figures import build_report_figure
    from mtlrun.report.stats import metric_columns

    result = report_main([str(runs / "multirun"), str(runs / "stl"), "--out", str(runs / "rep")])
    columns, directions = metric_columns([*result["mtl"], *result["baselines"]])
    mtl = [dataclasses.replace(g, label=f"{g.label} #{i}") for i in range(7) for g in result["mtl"]]
    fig = build_report_figure(mtl, [], (columns * 2)[:12], directions, set())
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        top_of_panels = max(ax.title.get_window_extent(renderer).y1 for ax in fig.axes if ax.axison)
        assert fig._suptitle.get_window_extent(renderer).y0 >= top_of_panels
    finally:
        plt.close(fig)


def test_report_robustness_passes_every_seed_and_the_directions(runs, capsys, monkeypatch):
    from mtlrun.engine import plots

    levels = [0.0, 1.0]
    for seed, run in enumerate(sorted((runs / "multirun").iterdir())):
        results = json.loads((run / "results.json").read_text())
        curves = {k: [v, v - 0.1 * (seed + 1)] for k, v in results["metrics"].items() if k.startswith("test/")}
        results["robustness"] = {"modality": "image", "noise": "gaussian", "levels": levels, "seed": 0,
                                 "metrics": curves, "auc": {k: sum(c) / 2 for k, c in curves.items()}}
        (run / "results.json").write_text(json.dumps(results))
    drawn = {}
    monkeypatch.setattr(plots, "plot_robustness", lambda curves, lv, title, path, directions, xlabel: drawn.update(
        curves=curves, levels=lv, title=title, directions=directions, xlabel=xlabel))
    out = report(runs / "multirun", "--out", runs / "rep", capsys=capsys)
    assert "## Robustness: gaussian on image (test split)" in out.out
    assert drawn["levels"] == levels and drawn["xlabel"] == "gaussian level on image"
    static = drawn["curves"]["weighting=static"]["left/accuracy"]  # every seed's curve, not their mean
    assert [c for curve in static for c in curve] == pytest.approx([0.86, 0.76, 0.88, 0.68, 0.90, 0.60])
    assert drawn["directions"]["left/accuracy"] is True and drawn["directions"]["sum/mae"] is False


def test_report_robustness_png_written(runs, capsys):
    for seed, run in enumerate(sorted((runs / "multirun").iterdir())):
        results = json.loads((run / "results.json").read_text())
        curves = {k: [v, v / 2] for k, v in results["metrics"].items() if k.startswith("test/")}
        results["robustness"] = {"modality": "audio", "noise": "white", "levels": [0, 1], "seed": 0,
                                 "metrics": curves, "auc": {k: sum(c) / 2 for k, c in curves.items()}}
        (run / "results.json").write_text(json.dumps(results))
    report(runs / "multirun", "--out", runs / "rep", capsys=capsys)
    assert (runs / "rep" / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
