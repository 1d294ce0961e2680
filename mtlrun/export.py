"""`mtlrun export checkpoint=PATH format=weights|pt2|torchscript|onnx`: the trained model without the training
state.

Every format writes, in the run dir (outputs/export/<date>/<time>) or `output`:
- config.yaml: the checkpoint's resolved config (what rebuilds the model)
- data_state.json: the data's fitted preprocessing (class lists, vocabularies, statistics), as JSON
- export.json: the format, the positional input and output order of pt2 / TorchScript / ONNX, the check's figures
and then model.safetensors (weights: `mtlrun.load(folder)` and `mtlrun predict checkpoint=folder` read it
back), model.pt2 (a torch.export ExportedProgram: `torch.export.load(path).module()`), model.ts (TorchScript)
or model.onnx. The check (mtlrun/inference/portable.py) runs the written model next to the PyTorch one on a
batch of the data and prints the max abs difference per task.
"""

from __future__ import annotations

import json
import logging

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mtlrun import __version__
from mtlrun.checks import is_number
from mtlrun.inference.opener import (COMMON_OPTIONS, CONFIG, DATA_STATE, META, NEW_DATA, RUNTIME_KEYS, WEIGHTS, Accepts,
                              open_predictor)
from mtlrun.predict import output_folder
from mtlrun.inference import portable
from mtlrun.engine.records import atomic_write_text, discard, file_in_the_way, writable_folder
from mtlrun.errors import UsageError, WriteError

log = logging.getLogger("mtlrun")
FILES = {"weights": WEIGHTS, "pt2": "model.pt2", "torchscript": "model.ts", "onnx": "model.onnx"}
EXPORTED = (CONFIG, DATA_STATE, META, *FILES.values(), "model.onnx.data")  # what an export folder holds
ACCEPTS = Accepts("export", options=(*COMMON_OPTIONS, "format", "output", "split", "tolerance"),
                  editable=RUNTIME_KEYS, new_data=NEW_DATA)  # data.path: check the export on that manifest


def export(cfg: DictConfig) -> dict:
    predictor, opened = open_predictor(cfg, ACCEPTS, list(HydraConfig.get().overrides.task), option_problems(cfg))
    path, read = opened.path, opened.reads
    out = writable_folder(output_folder(cfg)[1])  # before tracing: a read-only or full folder says so now
    model = predictor.model.float().cpu().eval()  # exported in float32 on the CPU, whatever trained it
    wrapper = portable.PositionalModel(model, predictor.modalities, list(predictor.tasks)).eval()
    batch = next(iter(predictor.data.eval_loader(cfg.split, device=torch.device("cpu"))), None)
    if batch is None:
        raise UsageError(f"{read}: no sample to check the export on")
    args = wrapper.arguments(batch)
    smaller = tuple(a[: max(1, len(a) // 2)] for a in args)
    with torch.no_grad():
        reference, reference_small = wrapper(*args), wrapper(*smaller)

    target = out / FILES[cfg.format]
    try:
        diffs, extra = _write_and_check(cfg.format, model, wrapper, target, (args, reference),
                                        (smaller, reference_small))
    except (WriteError, portable.ExportError):
        for written in (target, target.with_name(f"{target.name}.data")):  # onnx's external weights
            discard(written)  # the folder held no export before (option_problems): nothing earlier goes
        raise
    atomic_write_text(out / CONFIG, OmegaConf.to_yaml(OmegaConf.to_container(opened.config, resolve=True)))
    atomic_write_text(out / DATA_STATE, json.dumps(predictor.data_state, indent=1))
    meta = {"format": cfg.format, "file": target.name, "checkpoint": str(path), "mtlrun_version": __version__,
            "epoch": predictor.epoch, "inputs": _describe(wrapper.input_names(), args),
            "outputs": _describe(wrapper.tasks, reference), "checked_on": read, "max_abs_diff": diffs, **extra}
    atomic_write_text(out / META, json.dumps(meta, indent=1, default=str))
    lines = "\n".join(f"  {k}: max abs diff {v:.3g}" for k, v in diffs.items())
    log.info(f"exported {path} as {cfg.format} -> {target}\n{lines}")
    bad = {k: v for k, v in diffs.items() if not v <= cfg.tolerance}
    if bad:
        raise portable.ExportError(f"format={cfg.format}: the exported model differs from the PyTorch one by more "
                                   f"than tolerance={cfg.tolerance} ({', '.join(f'{k}: {v:.3g}' for k, v in bad.items())}"
                                   f"); a data-dependent branch was probably frozen by tracing. {target} is left for "
                                   f"inspection")
    return {"file": str(target), "max_abs_diff": diffs}


def option_problems(cfg: DictConfig) -> list[str]:
    """export's own options, listed with the checkpoint config's problems before anything runs."""
    problems = []
    if cfg.format not in portable.FORMATS:
        problems.append(f"format={cfg.format}: valid: {', '.join(portable.FORMATS)}")
    if not is_number(cfg.tolerance) or cfg.tolerance < 0:
        problems.append(f"tolerance={cfg.tolerance}: a finite number >= 0 (the largest abs difference accepted)")
    key, folder = output_folder(cfg)
    problem = file_in_the_way(key, folder)
    held = sorted(p.name for p in folder.iterdir() if p.name in EXPORTED or p.name.startswith("model.")) \
        if problem is None and folder.is_dir() else []
    if held:  # another export (or a run's config.yaml) that this one would leave half-replaced
        problem = (f"{key}={folder}: holds {', '.join(held)}; an export folder describes one model: choose a folder "
                   f"without these (export each format into a folder of its own)")
    return [*problems, *([problem] if problem else [])]


def _write_and_check(fmt: str, model, wrapper, target, full: tuple, small: tuple) -> tuple[dict, dict]:
    """Write the model as `fmt` into `target` and run it back: (max abs diff per task, what export.json adds)."""
    extra = {}
    if fmt == "weights":
        portable.write_weights(model, target)
        back = portable.read_weights(target)
        state = model.state_dict()
        diffs = {"weights": max((float((back[k].float() - v.float()).abs().max()) if v.numel() else 0.0)
                                for k, v in state.items())} if set(back) == set(state) else {"weights": float("inf")}
        return diffs, extra
    if fmt == "pt2":
        portable.to_pt2(wrapper, full[0], target)
        run = lambda a: portable.run_pt2(target, a)  # noqa: E731
    elif fmt == "torchscript":
        portable.to_torchscript(wrapper, full[0], target)
        run = lambda a: portable.run_torchscript(target, a)  # noqa: E731
    else:
        extra["exporter"], failed = portable.to_onnx(wrapper, full[0], target)
        if failed:
            extra["exporters_failed"] = failed
            log.info("ONNX: " + "; ".join(failed))
        run = lambda a: portable.run_onnx(target, wrapper, a)  # noqa: E731
    try:
        exported, exported_small = run(full[0]), run(small[0])
    except Exception as exc:
        raise portable.ExportError(f"format={fmt}: the exported model does not run: "
                                   f"{portable.first_line(exc)}") from None
    on_full, on_small = (portable.compare(wrapper.tasks, full[1], exported),
                         portable.compare(wrapper.tasks, small[1], exported_small))
    return {t: max(on_full[t], on_small[t]) for t in wrapper.tasks}, extra


def _describe(names, tensors) -> list[dict]:
    return [{"name": n, "shape": ["batch", *t.shape[1:]], "dtype": str(t.dtype).removeprefix("torch.")}
            for n, t in zip(names, tensors)]
