"""`mtlrun predict checkpoint=PATH [data.path=new.csv | split=test]`: the model's predictions per sample,
decoded per task (mtlrun/inference/predictions.py), written as predictions.csv, predictions.jsonl and, for dense
tasks, one PNG per sample and task under masks/.

The checkpoint is opened as `mtlrun eval` opens it (inference.open_checkpoint: trust check, then the overrides
ACCEPTS allows). `data.path` reads a new manifest (data=table) with the checkpoint's fitted preprocessing: no
target or split column is needed, and a row whose input cell is empty is predicted from its other modalities;
a bad cell stops the run with the message training gives. Without it, `split` of the checkpoint's own data is
predicted.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mtlrun.inference.opener import COMMON_OPTIONS, NEW_DATA, RUNTIME_KEYS, Accepts, open_predictor
from mtlrun.engine import rundir
from mtlrun.engine.records import atomic_write_text, file_in_the_way, writable_folder

log = logging.getLogger("mtlrun")
ACCEPTS = Accepts("predict", options=(*COMMON_OPTIONS, "split", "output", "id_column"), editable=RUNTIME_KEYS,
                  new_data=NEW_DATA)


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
    predictor, opened = open_predictor(cfg, ACCEPTS, list(HydraConfig.get().overrides.task), output_problems(cfg))
    out = writable_folder(output_folder(cfg)[1])  # before predicting: a read-only or full folder says so now
    split = "test" if cfg.data.path is not None else cfg.split
    predictions = predictor.predict_data(predictor.data, split, cfg.id_column)
    atomic_write_text(Path(HydraConfig.get().runtime.output_dir) / "config.yaml", OmegaConf.to_yaml(
        {"checkpoint": str(opened.path), "data_read": opened.reads, "id_column": cfg.id_column,
         **OmegaConf.to_container(opened.config, resolve=True)}))
    files = predictions.write(out)
    log.info(f"{len(predictions)} predictions of {', '.join(predictor.tasks)} ({opened.reads}) -> {files['csv']}")
    return {"rows": len(predictions), "csv": str(files["csv"])}
