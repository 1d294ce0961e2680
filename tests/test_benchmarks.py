"""Keep benchmarks/overhead.py runnable: a tiny run must finish and print a positive ratio (no timing checks)."""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"


def test_overhead_script_runs_and_prints_a_ratio():
    args = ["--steps", "3", "--rounds", "1", "--batch-size", "16", "--warmup", "1", "--threads", "1"]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next((ln for ln in proc.stdout.splitlines() if "ratio" in ln), None)
    assert line is not None, proc.stdout
    match = re.search(r"ratio[^:]*:\s*([0-9]+(?:\.[0-9]+)?)", line)
    assert match and float(match.group(1)) > 0, line
