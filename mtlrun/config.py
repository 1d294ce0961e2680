"""Where the configs live: configs/ and its groups (what `mtlrun --help` lists).

What is done with a config lives next to it: validation (mtlrun.validation), building a `_target_` node
(mtlrun.instantiate), task selection (mtlrun.task_selection), a checkpoint's overrides (mtlrun.overrides).
"""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    """configs/ at the repo top (editable install) or shipped inside the package (wheel install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"mtlrun's configs are missing: looked in {here / 'configs'} and {here.parent / 'configs'}")


def config_groups() -> dict[str, list[str]]:
    """{group: options}; nested groups by path, e.g. "backbone/image": ["cnn", "resnet18", ...]."""
    root = config_dir()
    groups = {}
    for d in sorted(root.rglob("*")):
        rel = d.relative_to(root)
        if not d.is_dir() or rel.parts[0] == "hydra" or any(part.startswith("_") for part in rel.parts):
            continue
        options = sorted(p.stem for p in d.glob("*.yaml"))
        if options:
            groups[rel.as_posix()] = options
    return groups
