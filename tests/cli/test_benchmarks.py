"""Keep the benchmark scripts runnable and their figures right (no timing checks)."""

import json
import re

import pytest
import torch

from contracts import REPO, compose_config, run_script
from mtlrun.build import build_components

pytestmark = pytest.mark.e2e  # each test runs a benchmark script (contracts.run_script: in this process, isolated)

SCRIPT = REPO / "benchmarks" / "overhead.py"


def test_overhead_script_runs_and_prints_a_ratio():
    args = ["--steps", "3", "--rounds", "1", "--batch-size", "16", "--warmup", "1", "--threads", "1"]
    proc = run_script(SCRIPT, *args, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next((ln for ln in proc.stdout.splitlines() if "ratio" in ln), None)
    assert line is not None, proc.stdout
    match = re.search(r"ratio[^:]*:\s*([0-9]+(?:\.[0-9]+)?)", line)
    assert match and float(match.group(1)) > 0, line


def test_logger_overhead_script_runs_and_prints_a_ratio():
    pytest.importorskip("tensorboard")
    args = ["--rounds", "1", "--n-train", "128", "--log-every", "2"]
    proc = run_script(SCRIPT.parent / "logger_overhead.py", *args, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(4 log steps of tensorboard)" in proc.stdout  # 4 steps an epoch, warm-up + 1 round, every second
    match = re.search(r"ratio on/off \(median of 1 rounds\): ([0-9.]+)", proc.stdout)
    assert match and float(match.group(1)) > 0, proc.stdout


def test_mixture_script_runs_and_prints_both_ratios():
    args = ["--rounds", "1", "--steps", "2", "--batch", "4"]
    proc = run_script(SCRIPT.parent / "mixture.py", *args, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for side in ("all", "mixture_one"):
        match = re.search(rf"ratio {side}/one \(median of 1 rounds\): ([0-9.]+)", proc.stdout)
        assert match and float(match.group(1)) > 0, proc.stdout


def test_constant_baseline_scores_the_train_statistics_on_test():
    """benchmarks/constant_baseline.py: the global depth predictor is the train median, scored as L1 on test."""
    overrides = ["experiment=scenes_hps", "data.n_train=24", "data.n_val=4", "data.n_test=12", "data.image_size=16",
                 "data.eval_batch_size=5"]
    script = SCRIPT.parent / "constant_baseline.py"
    proc = run_script(script, *overrides, "--json", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(proc.stdout)
    assert set(results) == {"global", "per_pixel"}

    data = build_components(compose_config(overrides)).data
    train = data.dataset("train").__getitems__(list(range(24)))["targets"]
    test = data.dataset("test").__getitems__(list(range(12)))["targets"]
    median = train["depth"][train["depth"] > 0].median()
    valid = test["depth"] > 0
    assert results["global"]["depth/abs_err"] == pytest.approx((test["depth"][valid] - median).abs().mean().item(),
                                                               rel=1e-5)
    majority = torch.bincount(train["segmentation"][train["segmentation"] >= 0].flatten(), minlength=5).argmax()
    labelled = test["segmentation"] >= 0
    accuracy = (test["segmentation"][labelled] == majority).double().mean().item()
    assert results["global"]["segmentation/pixel_accuracy"] == pytest.approx(accuracy, rel=1e-6)
    # the per-pixel layout prior is the stronger of the two on these scenes
    assert results["per_pixel"]["segmentation/pixel_accuracy"] > results["global"]["segmentation/pixel_accuracy"]


def test_diagnostics_script_times_both_sides_and_prints_the_ratio():
    script = SCRIPT.parent / "diagnostics.py"
    args = ["--rounds", "1", "--windows", "1", "--threads", "1", "data.batch_size=16", "trainer.log_every_n_steps=2",
            "data.n_train=64"]
    proc = run_script(script, *args, timeout=180, cwd=script.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"measured every 2 steps, 2 steps per side per round", proc.stdout), proc.stdout
    assert re.search(r"median on/off per step: [0-9.]+ ", proc.stdout), proc.stdout


def test_plot_time_script_runs_and_prints_its_times():
    script = SCRIPT.parent / "plot_time.py"
    proc = run_script(script, "--epochs", "2", "--repeat", "1", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"2 epochs, 3 tasks: first call ([0-9.]+) s .* median ([0-9.]+) s over 1 calls", proc.stdout)
    assert match and float(match.group(1)) > 0 and float(match.group(2)) > 0, proc.stdout


def test_gpu_check_dry_run_on_cpu_passes_or_needs_cuda(tmp_path):
    """benchmarks/gpu_check.py --device cpu: every group runs through the real Trainer at tiny sizes; every check
    passes, or says it needs CUDA (sync debug mode, speed targets, compile)."""
    out = tmp_path / "gpu_check.json"
    proc = run_script(SCRIPT.parent / "gpu_check.py", "--device", "cpu", "--out", str(out), timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["passed"] is True and report["device"] == "cpu"
    checks = report["checks"]
    groups = {c["group"] for c in checks}
    assert groups == {"placement", "sync", "throughput", "precision", "gradient"}
    for check in checks:
        assert check["status"] == "pass" or check["status"].startswith("skipped: needs cuda"), check
        assert check["name"] in proc.stdout
    names = {c["name"] for c in checks}
    assert {f"data={d}" for d in ("multidigits", "digits_av", "scenes", "cifar10", "celeba", "nyuv2", "table")} <= names
    assert {"weighting=static", "weighting=uw", "weighting=famo", "text=gru", "text=transformer", "fusion=concat",
            "fusion=attention"} <= names
    assert all(f"weighting={m} grad_on={level}" in names for m in ("gradnorm", "upgrad", "mgda", "nash_mtl")
               for level in ("parameters", "representation"))
    assert all(c["status"] == "pass" for c in checks if c["group"] in ("placement", "gradient"))
    assert all(c["eval_metrics"] > 0 for c in checks if c["group"] == "placement")
    gradient = {c["name"]: c for c in checks if c["group"] == "gradient"}
    assert set(gradient) == {f"upgrad vs static, {k} tasks" for k in (2, 3, 10)}
    assert all(c["ms_per_step"]["upgrad"] > 0 and c["ms_per_step"]["static"] > 0 for c in gradient.values())
    assert all(c["ratio"] > 0 for c in checks if c["group"] == "throughput")


def test_detection_cost_script_runs_and_prints_a_ratio():
    pytest.importorskip("torchmetrics")
    args = ["--steps", "1", "--rounds", "1", "data.image_size=16", "backbone.image.channels=[4,8]"]
    proc = run_script(SCRIPT.parent / "detection_cost.py", *args, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"with / without: median ([0-9.]+)", proc.stdout)
    assert match and float(match.group(1)) > 0, proc.stdout

