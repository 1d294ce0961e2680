"""Checkpoints: written atomically, read with weights_only=True, checked to come from mtlrun.

A checkpoint carries everything `mtlrun eval` and `resume=` need: model, optimizer, scheduler, AMP scaler,
weighting state, RNG states of every rank, loop position, metric history and the resolved config.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from mtlrun.engine.records import discard
from mtlrun.errors import UsageError, WriteError, os_error_behind
from mtlrun.moved_modules import moved_name

FORMAT = 1
REQUIRED = ("mtlrun_version", "format", "config", "model")
# `_target_`s that moved since a checkpoint was written: old dotted name -> new one. A checkpoint's config
# is rewritten with them when it is loaded, so runs of earlier mtlrun versions still evaluate and resume.
RENAMED_TARGETS: dict[str, str] = {
    # models/fusion.py, split into the package models/fusion/ (one file per fusion); late fusion moved there
    "mtlrun.models.fusion.Attention": "mtlrun.models.fusion.attention.Attention",
    "mtlrun.models.fusion.Concat": "mtlrun.models.fusion.concat.Concat",
    "mtlrun.models.fusion.CrossAttention": "mtlrun.models.fusion.cross_attention.CrossAttention",
    "mtlrun.models.fusion.Early": "mtlrun.models.fusion.early.Early",
    "mtlrun.models.fusion.Embrace": "mtlrun.models.fusion.embrace.Embrace",
    "mtlrun.models.fusion.FiLM": "mtlrun.models.fusion.film.FiLM",
    "mtlrun.models.fusion.Gated": "mtlrun.models.fusion.gated.Gated",
    "mtlrun.models.fusion.LowRank": "mtlrun.models.fusion.low_rank.LowRank",
    "mtlrun.models.fusion.Mean": "mtlrun.models.fusion.mean.Mean",
    "mtlrun.models.fusion.Sum": "mtlrun.models.fusion.sum.Sum",
    "mtlrun.models.fusion.Tensor": "mtlrun.models.fusion.tensor.Tensor",
    "mtlrun.models.fusion.Weighted": "mtlrun.models.fusion.weighted.Weighted",
    "mtlrun.models.multimodal.LateFusion": "mtlrun.models.fusion.late.LateFusion",
    # weighting/gradient.py and weighting/loss.py, split into one file per method
    "mtlrun.weighting.gradient.AlignedMTL": "mtlrun.weighting.aligned_mtl.AlignedMTL",
    "mtlrun.weighting.gradient.CAGrad": "mtlrun.weighting.cagrad.CAGrad",
    "mtlrun.weighting.gradient.ConFIG": "mtlrun.weighting.config.ConFIG",
    "mtlrun.weighting.gradient.DualProj": "mtlrun.weighting.dualproj.DualProj",
    "mtlrun.weighting.gradient.FairGrad": "mtlrun.weighting.fairgrad.FairGrad",
    "mtlrun.weighting.gradient.GradDrop": "mtlrun.weighting.graddrop.GradDrop",
    "mtlrun.weighting.gradient.GradVac": "mtlrun.weighting.gradvac.GradVac",
    "mtlrun.weighting.gradient.IMTLG": "mtlrun.weighting.imtl_g.IMTLG",
    "mtlrun.weighting.gradient.MGDA": "mtlrun.weighting.mgda.MGDA",
    "mtlrun.weighting.gradient.NashMTL": "mtlrun.weighting.nash_mtl.NashMTL",
    "mtlrun.weighting.gradient.PCGrad": "mtlrun.weighting.pcgrad.PCGrad",
    "mtlrun.weighting.gradient.UPGrad": "mtlrun.weighting.upgrad.UPGrad",
    "mtlrun.weighting.loss.DynamicWeightAverage": "mtlrun.weighting.dwa.DynamicWeightAverage",
    "mtlrun.weighting.loss.FAMO": "mtlrun.weighting.famo.FAMO",
    "mtlrun.weighting.loss.GeometricLossStrategy": "mtlrun.weighting.gls.GeometricLossStrategy",
    "mtlrun.weighting.loss.IMTLL": "mtlrun.weighting.imtl_l.IMTLL",
    "mtlrun.weighting.loss.RandomLossWeighting": "mtlrun.weighting.rlw.RandomLossWeighting",
    "mtlrun.weighting.loss.UncertaintyWeighting": "mtlrun.weighting.uw.UncertaintyWeighting",
}


def save(path: str | os.PathLike, state: dict) -> None:
    """Write via a temp file in the same directory, fsync, then os.replace: a crash or a full disk never
    leaves half a file, and the previous file stays as it was until the new one is complete.

    torch.save is given a Python file object: with a path, a full disk surfaces as an opaque
    "enforce fail at inline_container.cc" RuntimeError instead of ENOSPC.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        cause = os_error_behind(exc)
        if cause is None:
            raise
        raise WriteError(path, cause) from exc
    finally:
        discard(tmp)


def load(path: str | os.PathLike, key: str = "checkpoint") -> dict:
    """Load and validate; errors name the config key (`checkpoint=` or `resume=`) and the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        hint = " (it is a directory; point at checkpoints/last.pt or best.pt)" if path.is_dir() else ""
        raise UsageError(f"{key}={path}: no such file{hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{key}={path}: cannot be read as a checkpoint (corrupt, truncated or not a "
                         f"torch file): {first}") from exc
    missing = [k for k in REQUIRED if not (isinstance(state, dict) and k in state)]
    if missing:
        raise UsageError(f"{key}={path}: not a mtlrun checkpoint (missing {', '.join(missing)}); use "
                         f"checkpoints/last.pt or checkpoints/best.pt from a `mtlrun train` run")
    if state["format"] > FORMAT:
        raise UsageError(f"{key}={path}: written by mtlrun {state['mtlrun_version']} in checkpoint format "
                         f"{state['format']}; this mtlrun reads format <= {FORMAT}. Upgrade mtlrun")
    state["config"] = rename_targets(state["config"])
    return state


def rename_targets(node):
    """A copy of a plain config container with every moved `_target_` given its current name."""
    if isinstance(node, dict):
        out = {k: rename_targets(v) for k, v in node.items()}
        target = out.get("_target_")
        if isinstance(target, str) and target in RENAMED_TARGETS:
            out["_target_"] = RENAMED_TARGETS[target]
        elif isinstance(target, str) and moved_name(target):  # a module that moved (moved_modules)
            out["_target_"] = moved_name(target)
        return out
    if isinstance(node, list):
        return [rename_targets(v) for v in node]
    return node


def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
             "python": [py_state[0], list(py_state[1]), py_state[2]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
