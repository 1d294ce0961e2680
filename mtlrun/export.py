"""`mtlrun export checkpoint=PATH format=weights|torchscript|onnx`: the trained model without the training state.

Every format writes, in the run dir (outputs/export/<date>/<time>) or `output`:
- config.yaml: the checkpoint's resolved config (what rebuilds the model)
- data_state.json: the data's fitted preprocessing (class lists, vocabularies, statistics), as JSON
- export.json: the format, the positional input and output order of TorchScript / ONNX, the check's figures
and then model.safetensors (weights: `mtlrun.load(folder)` and `mtlrun predict checkpoint=folder` read it
back), model.ts (TorchScript) or model.onnx. The check (mtlrun/engine/portable.py) runs the written model
next to the PyTorch one on a batch of the data and prints the max abs difference per task.
"""

from __future__ import annotations

import json
import logging

import torch
from omegaconf import DictConfig, OmegaConf

from mtlrun import __version__
from mtlrun.inference import CONFIG, DATA_STATE, META, WEIGHTS
from mtlrun.predict import open_checkpoint, output_dir
from mtlrun.engine import portable
from mtlrun.engine.records import atomic_write_text
from mtlrun.errors import UsageError

log = logging.getLogger("mtlrun")
FILES = {"weights": WEIGHTS, "torchscript": "model.ts", "onnx": "model.onnx"}


def export(cfg: DictConfig) -> dict:
    if cfg.format not in portable.FORMATS:
        raise UsageError(f"format={cfg.format}: valid: {', '.join(portable.FORMATS)}")
    if isinstance(cfg.tolerance, bool) or not isinstance(cfg.tolerance, (int, float)) or cfg.tolerance < 0:
        raise UsageError(f"tolerance={cfg.tolerance}: a number >= 0 (the largest abs difference accepted)")
    predictor, path, read, run_cfg = open_checkpoint(cfg, "export")
    model = predictor.model.float().cpu().eval()  # exported in float32 on the CPU, whatever trained it
    wrapper = portable.PositionalModel(model, predictor.modalities, list(predictor.tasks)).eval()
    batch = next(iter(predictor.data.eval_loader(cfg.split, device=torch.device("cpu"))), None)
    if batch is None:
        raise UsageError(f"{read}: no sample to check the export on")
    args = wrapper.arguments(batch)
    smaller = tuple(a[: max(1, len(a) // 2)] for a in args)
    with torch.no_grad():
        reference, reference_small = wrapper(*args), wrapper(*smaller)

    out = output_dir(cfg)
    target = out / FILES[cfg.format]
    extra = {}
    if cfg.format == "weights":
        portable.write_weights(model, target)
        back = portable.read_weights(target)
        state = model.state_dict()
        diffs = {"weights": max((float((back[k].float() - v.float()).abs().max()) if v.numel() else 0.0)
                                for k, v in state.items())} if set(back) == set(state) else {"weights": float("inf")}
    else:
        if cfg.format == "torchscript":
            portable.to_torchscript(wrapper, args, target)
            run = lambda a: portable.run_torchscript(target, a)  # noqa: E731
        else:
            extra["exporter"], failed = portable.to_onnx(wrapper, args, target)
            if failed:
                extra["exporters_failed"] = failed
                log.info("ONNX: " + "; ".join(failed))
            run = lambda a: portable.run_onnx(target, wrapper, a)  # noqa: E731
        try:
            exported, exported_small = run(args), run(smaller)
        except Exception as exc:
            raise portable.ExportError(f"format={cfg.format}: the exported model does not run: "
                                       f"{portable.first_line(exc)}") from None
        full, small = (portable.compare(wrapper.tasks, reference, exported),
                       portable.compare(wrapper.tasks, reference_small, exported_small))
        diffs = {t: max(full[t], small[t]) for t in wrapper.tasks}
    atomic_write_text(out / CONFIG, OmegaConf.to_yaml(OmegaConf.to_container(run_cfg, resolve=True)))
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


def _describe(names, tensors) -> list[dict]:
    return [{"name": n, "shape": ["batch", *t.shape[1:]], "dtype": str(t.dtype).removeprefix("torch.")}
            for n, t in zip(names, tensors)]
