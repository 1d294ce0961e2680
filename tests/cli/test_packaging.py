"""A plain wheel install (`pip install .`) ships the configs and the CLI finds them from any directory."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from contracts import REPO


def test_package_list_covers_every_subpackage():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "mtlrun").rglob("__init__.py")}
    assert on_disk | {"mtlrun.configs"} == listed


@pytest.mark.e2e
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

    # A venv that gets mtlrun only from the wheel and torch & co. from the environment running this test.
    # `venv --system-site-packages` would not do: inside a virtualenv (how users install) it exposes the
    # base interpreter's site-packages, not the virtualenv's, so torch would be missing. Instead a .pth
    # lists this interpreter's site directories. They are appended after the venv's own site-packages, so
    # the wheel comes first, and, being plain path lines, they are added to sys.path without their own .pth
    # files being run: the editable install's finder (a .pth there) never loads.
    # Without pip of its own (ensurepip alone takes seconds) where this environment's pip can install into it
    # (--python, pip 22.3+).
    from importlib.metadata import version  # not `import pip`: that loads setuptools' distutils hack here

    outer_pip = tuple(int(x) for x in version("pip").split(".")[:2]) >= (22, 3)
    subprocess.run([sys.executable, "-m", "venv", *(["--without-pip"] if outer_pip else []), str(venv)], check=True)
    bin_dir = venv / "bin"
    purelib = Path(subprocess.run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    outer = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    (purelib / "_outer_env.pth").write_text("".join(f"{d}\n" for d in outer))
    installer = [sys.executable, "-m", "pip", "--python", str(bin_dir / "python")] if outer_pip else \
        [bin_dir / "python", "-m", "pip"]
    subprocess.run([*installer, "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    # where mtlrun comes from, and that the wheel's own dependencies are met by what the venv sees
    probe = subprocess.run([bin_dir / "python", "-c", PROBE], cwd=elsewhere, env=env, capture_output=True,
                           text=True)
    assert probe.returncode == 0, probe.stderr
    info = json.loads(probe.stdout)
    assert info["missing"] == [], f"the wheel's dependencies are not met in the test venv: {info['missing']}"
    assert Path(info["file"]) == purelib / "mtlrun" / "__init__.py"
    assert Path(info["config_dir"]) == purelib / "mtlrun" / "configs"
    assert Path(info["dist"]) == purelib, "importlib.metadata sees another mtlrun before the wheel's"
    assert not info["editable_finders"], info["editable_finders"]
    assert str(REPO) not in info["sys_path"]

    proc = subprocess.run([bin_dir / "mtlrun", "train", "--cfg", "job", "backbone/image=resnet34"], cwd=elsewhere,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "depth: 34" in proc.stdout
    proc = subprocess.run([bin_dir / "mtlrun", "--help"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "resnet50" in proc.stdout


# Run in the test venv: where mtlrun and its metadata come from, which editable finders are loaded, and which
# of the wheel's non-optional dependencies are missing or at a version outside the range it declares.
PROBE = """
import importlib.metadata as md, json, sys
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
import mtlrun, mtlrun.config
dist = md.distribution("mtlrun")
missing = []
for line in dist.requires or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        missing.append(f"{req} (not installed)")
        continue
    if not req.specifier.contains(version, prereleases=True):
        missing.append(f"{req} (found {version})")
    __import__({"scikit-learn": "sklearn", "hydra-core": "hydra"}.get(req.name, req.name).replace("-", "_"))
print(json.dumps({
    "file": mtlrun.__file__,
    "config_dir": str(mtlrun.config.config_dir()),
    "dist": str(dist.locate_file("")),
    "editable_finders": [repr(f) for f in sys.meta_path if "editable" in repr(f).lower()],
    "sys_path": sys.path,
    "missing": missing,
}))
"""
