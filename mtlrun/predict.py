"""`mtlrun predict checkpoint=PATH [data.path=new.csv | split=test]`: the model's predictions per sample,
decoded per task (mtlrun/engine/predictions.py), written as predictions.csv, predictions.jsonl and, for dense
tasks, one PNG per sample and task under masks/.

The checkpoint is read as `mtlrun eval` reads it (trust check, then the overrides eval allows). `data.path`
reads a new manifest (data=table) with the checkpoint's fitted preprocessing: no target or split column is
needed, and a row whose input cell is empty is predicted from its other modalities; a bad cell stops the run
with the message training gives. Without it, `split` of the checkpoint's own data is predicted.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mtlrun import distributed
from mtlrun.inference import Predictor, build_predictor, prediction_data, read_source
from mtlrun.overrides import apply_overrides
from mtlrun.validation import validate_eval
from mtlrun.data.base import SPLITS
from mtlrun.engine import rundir
from mtlrun.engine.records import atomic_write_text, file_in_the_way, writable_folder
from mtlrun.engine.threads import apply_threads
from mtlrun.errors import UsageError
from mtlrun.trust import check_source

log = logging.getLogger("mtlrun")
# what reading another manifest may set (data=table)
NEW_DATA = ("data.path", "data.root", "data.encoding", "data.na_values")
ALLOWED = ("data.batch_size", "data.eval_batch_size", "data.num_workers", "data.allow_outside_root",
           "trainer.device", "trainer.precision", "trainer.threads")  # on the checkpoint's config


def open_checkpoint(cfg: DictConfig, what: str,
                    options: list[str] = ()) -> tuple[Predictor, Path, str, DictConfig]:
    """(predictor, checkpoint path, what data it reads, the run's config) for `mtlrun predict` and `mtlrun
    export`: the checkpoint read as eval reads it, with `data.path` a new manifest read for prediction.
    `options`: the problems of the command's own options, listed with the config's before anything is built."""
    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.checkpoint:
        raise UsageError(f"mtlrun {what} needs checkpoint=PATH (checkpoints/best.pt of a train run, or the folder "
                         f"of `mtlrun export format=weights`)")
    options = [*([f"split={cfg.split}: valid: {', '.join(SPLITS)}"] if cfg.split not in SPLITS else []), *options]
    if distributed.dist_info().enabled:  # every rank would write the same files over each other
        raise UsageError(f"mtlrun {what} runs in one process; start it without torchrun / srun")
    path = Path(cfg.checkpoint).expanduser().resolve()
    source = read_source(path)
    check_source(source, list(cfg.get("trusted_targets") or []), f"checkpoint={path}")
    typed = list(HydraConfig.get().overrides.task)
    new_data = cfg.data.path is not None
    data_keys = [o for o in typed if o.split("=", 1)[0].lstrip("+~") in NEW_DATA]
    if data_keys and not new_data:
        raise UsageError("data.root / data.encoding / data.na_values: only with data.path=NEW_MANIFEST (the rows to "
                         "read)")
    run_cfg = apply_overrides(source["config"], cfg, [o for o in typed if o not in data_keys], ALLOWED, what,
                              skip=("split", "output", "id_column", "trusted_targets", "format", "tolerance"))
    validate_eval(run_cfg, ALLOWED, options)  # after the trust check: it imports the config's targets
    apply_threads(run_cfg.trainer.threads)
    if cfg.data.batch_size is not None and cfg.data.eval_batch_size is None:
        run_cfg.data.eval_batch_size = cfg.data.batch_size
    data = None
    if new_data:
        data = prediction_data(run_cfg, source["data"], Path(cfg.data.path).expanduser(), cfg.data.root,
                               cfg.data.encoding, cfg.data.get("na_values"))
    predictor = build_predictor(run_cfg, source, data=data, device=str(run_cfg.trainer.device),
                                precision=str(run_cfg.trainer.precision))
    read = str(Path(cfg.data.path).expanduser().resolve()) if new_data else f"split={cfg.split}"
    return predictor, path, read, run_cfg


def output_folder(cfg: DictConfig) -> tuple[str, Path]:
    """(the key that chose it, the folder) where the command's files go: `output`, else the run dir."""
    if cfg.get("output"):
        return "output", Path(cfg.output).expanduser()
    return "hydra.run.dir", Path(HydraConfig.get().runtime.output_dir)


def output_problems(cfg: DictConfig) -> list[str]:
    """`output=` that is a file, or a folder holding another command's records (the run dir was checked when
    the CLI took it): predictions go into a folder of their own. Earlier predictions there are replaced."""
    key, folder = output_folder(cfg)
    problem = file_in_the_way(key, folder)
    found = rundir.owner(folder) if problem is None and key == "output" and folder.is_dir() else None
    if found not in (None, "predict"):
        problem = (f"output={folder}: holds the records of a `mtlrun {found}` run; predictions go into a folder of "
                   f"their own: choose another output")
    return [problem] if problem else []


def predict(cfg: DictConfig) -> dict:
    predictor, path, read, run_cfg = open_checkpoint(cfg, "predict", output_problems(cfg))
    out = writable_folder(output_folder(cfg)[1])  # before predicting: a read-only or full folder says so now
    split = "test" if cfg.data.path is not None else cfg.split
    predictions = predictor.predict_data(predictor.data, split, cfg.id_column)
    atomic_write_text(Path(HydraConfig.get().runtime.output_dir) / "config.yaml", OmegaConf.to_yaml(
        {"checkpoint": str(path), "data_read": read, "id_column": cfg.id_column,
         **OmegaConf.to_container(run_cfg, resolve=True)}))
    files = predictions.write(out)
    log.info(f"{len(predictions)} predictions of {', '.join(predictor.tasks)} ({read}) -> {files['csv']}")
    return {"rows": len(predictions), "csv": str(files["csv"])}
