"""A plain wheel install (`pip install .`) ships the configs and the CLI finds them from any directory."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_package_list_covers_every_subpackage():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "mtlrun").rglob("__init__.py")}
    assert on_disk | {"mtlrun.configs"} == listed


def test_wheel_install_finds_configs_from_any_directory(tmp_path):
    wheels, venv, elsewhere = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                    "-w", str(wheels)], check=True, capture_output=True)
    (wheel,) = wheels.glob("mtlrun-*.whl")
    shipped = {n.removeprefix("mtlrun/configs/") for n in zipfile.ZipFile(wheel).namelist()
               if n.startswith("mtlrun/configs/")}
    in_repo = {str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml")}
    assert shipped == in_repo

    # a venv that sees torch & co. from this interpreter but gets mtlrun only from the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    bin_dir = venv / "bin"
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True)
    where = subprocess.run([bin_dir / "python", "-c", "import mtlrun.config as c; print(c.config_dir())"],
                           cwd=elsewhere, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where) == venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages" / "mtlrun" / "configs"
    proc = subprocess.run([bin_dir / "mtlrun", "train", "--cfg", "job", "backbone/image=resnet34"], cwd=elsewhere,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "depth: 34" in proc.stdout
    proc = subprocess.run([bin_dir / "mtlrun", "--help"], cwd=elsewhere, capture_output=True, text=True)
    assert proc.returncode == 0 and "resnet50" in proc.stdout
