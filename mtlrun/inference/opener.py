"""A trained model, ready to predict: from a checkpoint (`.pt`) or an exported weights folder (`mtlrun export
format=weights`) to the model in eval mode, its tasks and the data module with the fitted preprocessing.

The one checkpoint opener: `mtlrun eval`, `mtlrun predict`, `mtlrun export` (open_checkpoint, each command
declaring what it accepts in an `Accepts`) and the Python API (`mtlrun.load`) all read a checkpoint through
open_source, so the stored config is trust-checked before anything is built from it, the same way for all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mtlrun import distributed
from mtlrun.build import Components, build_components
from mtlrun.instantiate import TargetNotFound, instantiate_node, locate
from mtlrun.checks import is_int
from mtlrun.overrides import apply_overrides
from mtlrun.trust import check_source, without_trackers
from mtlrun.validation import validate_eval
from mtlrun.data.base import SPLITS
from mtlrun.data.loading import to_device
from mtlrun.engine import checkpoint
from mtlrun.engine.device import autocast, resolve_device
from mtlrun.inference.predictions import Predictions
from mtlrun.engine.threads import apply_threads
from mtlrun.errors import UsageError
from mtlrun.untrusted_files import UntrustedFileError, read_json, read_yaml

# An exported weights folder (mtlrun export format=weights): what each file holds.
WEIGHTS, CONFIG, DATA_STATE, META = "model.safetensors", "config.yaml", "data_state.json", "export.json"


def read_source(path: str | Path, key: str = "checkpoint", exports: bool = True) -> dict:
    """{"config", "model", "data", "epoch", "global_step", "label"} from a checkpoint file or an exported weights
    folder (with "files": the file of each part), not checked yet (check_source). `exports` False: a folder is
    refused as checkpoint.load refuses it."""
    path = Path(path).expanduser()
    if not path.is_dir() or not exports:
        state = checkpoint.load(path, key)
        return {"config": state["config"], "model": state["model"], "data": state.get("data") or {},
                "epoch": state.get("epoch"), "global_step": state.get("global_step"), "label": f"{key}={path}"}
    missing = [name for name in (WEIGHTS, CONFIG, DATA_STATE) if not (path / name).is_file()]
    if missing:
        raise UsageError(f"{key}={path}: a folder must be an export of `mtlrun export format=weights` (missing "
                         f"{', '.join(missing)}); or point at checkpoints/best.pt")
    try:
        from safetensors.torch import load_file

        # bounded: never OmegaConf.load on a file anyone may have edited; an export writes no symbolic links
        config = read_yaml(path / CONFIG, allow_symlink=False)
        data = read_json(path / DATA_STATE, finite=False, allow_symlink=False)
        meta = _weights_export(read_json(path / META, finite=False, allow_symlink=False), path / META) \
            if (path / META).exists() else {}
        if (path / WEIGHTS).is_symlink():
            raise UntrustedFileError(path / WEIGHTS, "is a symbolic link; mtlrun writes a regular file here")
        model = load_file(path / WEIGHTS)
    except ImportError:
        raise UsageError(f"{key}={path}: reading exported weights needs safetensors: pip install safetensors") from None
    except UntrustedFileError as exc:
        error = UsageError(f"{key}={path}: {exc.where_why}")
        error.exit_code = exc.exit_code  # 1 where the file could not be read at all
        raise error from None
    except Exception as exc:
        raise UsageError(f"{key}={path}: cannot read the export ({type(exc).__name__}: {exc})") from None
    return {"config": checkpoint.rename_targets(config), "model": model, "data": data,
            "epoch": meta.get("epoch"), "global_step": meta.get("global_step"),
            "label": f"{key}={path}", "files": {"config": CONFIG, "model": WEIGHTS, "data": DATA_STATE}}


def _weights_export(meta: dict, file: Path) -> dict:
    """export.json of a folder read as weights: it must say format=weights (a folder of another format holds no
    model.safetensors of its own), and its epoch and step are integers or null."""
    if meta.get("format") != "weights":
        raise UntrustedFileError(file, f"format={meta.get('format')!r}: mtlrun.load and predict read a "
                                       f"`format=weights` export (pt2, torchscript and onnx files run in their own "
                                       f"runtimes)")
    for key in ("epoch", "global_step"):
        if meta.get(key) is not None and not is_int(meta[key]):
            raise UntrustedFileError(file, f"{key}={meta[key]!r}: must be an integer or null")
    return meta


def prediction_data(cfg: DictConfig, data_state: dict, path: str | Path, root: str | Path | None = None,
                    encoding: str | None = None, na_values=None):
    """The data module of `cfg` reading the new manifest `path` (data=table) with the checkpoint's fitted
    preprocessing: every row is the test split, target and split columns are not needed. Relative file paths
    in its cells start at `root` (null: its own folder, whatever root training had); `encoding` and `na_values`
    null: the training manifest's."""
    try:
        data_class = locate(str(cfg.data._target_))
    except TargetNotFound as exc:
        raise UsageError(f"data._target_={cfg.data._target_}: cannot import it ({exc})") from None
    if not hasattr(data_class, "read_unlabelled"):
        raise UsageError(f"data.path={path}: new rows are read by data=table; this model was trained on "
                         f"{cfg.data._target_}; predict one of its splits with split=train|val|test instead")
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    cfg.data.path = str(path)
    cfg.data.root = None if root is None else str(root)
    if encoding is not None:
        cfg.data.encoding = encoding
    if na_values is not None:
        cfg.data.na_values = na_values
    data = instantiate_node(cfg.data, "data", _recursive_=False)  # transforms: mtlrun.data.transforms builds them
    data.load_state_dict(data_state)
    data.read_unlabelled()
    return data


@dataclass
class Predictor:
    """What `mtlrun.load(checkpoint)` returns: the model (eval mode) with its tasks and preprocessing.

    - `predict(batch)`: {task: raw output} for a batch dict ({"inputs": ..., "modality_mask": ...}) or a dict
      of inputs, on `device`, without gradients
    - `predict_table(path)`: a new manifest (CSV / JSON Lines, no target columns needed) read with the
      checkpoint's fitted preprocessing -> `Predictions` (`.rows()` the CSV rows, `.records()` the JSON
      objects, `.write(folder)` the files of `mtlrun predict`)
    - `predict_split(split)`: a split of the checkpoint's own data
    """

    model: torch.nn.Module
    tasks: dict
    data: object
    config: DictConfig
    data_state: dict
    device: torch.device
    precision: str = "32"
    epoch: int | None = None

    @property
    def modalities(self) -> list[str]:
        return list(self.data.spec.modalities)

    @torch.no_grad()
    def predict(self, batch: dict, modality_mask: dict | None = None) -> dict[str, torch.Tensor]:
        inputs = batch["inputs"] if "inputs" in batch else batch
        mask = batch.get("modality_mask", modality_mask) if "inputs" in batch else modality_mask
        inputs, mask = to_device(inputs, self.device), to_device(mask, self.device)
        with autocast(self.device, self.precision):
            return self.model(inputs, modality_mask=mask)

    def predict_loader(self, loader) -> dict[str, torch.Tensor]:
        """The outputs over a whole loader, float32 on the CPU: one transfer per batch, none per sample."""
        chunks: dict[str, list[torch.Tensor]] = {t: [] for t in self.tasks}
        for batch in loader:
            for t, out in self.predict(batch).items():
                chunks[t].append(out.float().cpu())
        return {t: torch.cat(c) if c else torch.empty(0) for t, c in chunks.items()}

    def predict_data(self, data, split: str = "test", id_column: str | None = None,
                     batch_size: int | None = None) -> Predictions:
        loader = data.eval_loader(split, device=self.device, batch_size=batch_size)
        return Predictions(data.sample_ids(split, id_column), self.predict_loader(loader), self.tasks, data, split)

    def predict_table(self, path: str | Path, id_column: str | None = None,
                      batch_size: int | None = None) -> Predictions:
        return self.predict_data(prediction_data(self.config, self.data_state, path), "test", id_column, batch_size)

    def predict_split(self, split: str = "test", id_column: str | None = None,
                      batch_size: int | None = None) -> Predictions:
        return self.predict_data(self.data, split, id_column, batch_size)


def load_weights(model: torch.nn.Module, weights: dict, label: str) -> None:
    """The checkpoint's weights into the model its config builds; one that does not fit (an edited or mixed-up
    file) is a UsageError naming the file (`label`, e.g. "checkpoint=PATH") and the first tensor that differs."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc).strip()]
        first = details[0] if len(details[0]) <= 240 else details[0][:237] + "..."
        raise UsageError(f"{label}: the weights do not fit the model its config builds ({first})") from None


def build_predictor(cfg: DictConfig, source: dict, *, data=None, device: str | None = "cpu",
                    precision: str = "32") -> Predictor:
    """The model of a checked config with the source's weights, in eval mode on `device` (null: the best)."""
    parts: Components = build_components(cfg, data_state=source["data"], data=data)
    load_weights(parts.model, source["model"], source.get("label", "checkpoint"))
    target = resolve_device(device or "auto")
    model = parts.model.to(target).eval()
    return Predictor(model, parts.tasks, parts.data, cfg, source["data"], target, str(precision), source["epoch"])


def load(checkpoint: str | Path, trusted_targets: Sequence[str] = (), *, device: str | None = "cpu",
         data_path: str | Path | None = None) -> Predictor:
    """`mtlrun.load`: a checkpoint (`checkpoints/best.pt`) or an exported weights folder -> Predictor.

    `trusted_targets`: module prefixes whose classes the checkpoint's config may name besides mtlrun's own (as
    `trusted_targets=[...]` on the command line); a checkpoint cannot trust itself. `data_path`: read this
    manifest instead of the training one (data=table), e.g. when the training files are not on this machine.
    """
    source = open_source(checkpoint, trusted_targets)
    cfg = OmegaConf.create(source["config"])
    validate_eval(cfg, ())  # as the commands do: fills in the trainer keys an older checkpoint lacks
    data = prediction_data(cfg, source["data"], data_path) if data_path is not None else None
    return build_predictor(cfg, source, data=data, device=device)


# ------------------------------------------------------------------------ opening a checkpoint for a command
COMMON_OPTIONS = ("checkpoint", "trusted_targets")
# The keys of a checkpoint's config that say how its model runs here, not what it is: predict and export may
# change these (eval as well, and trainer.limit_eval_batches).
RUNTIME_KEYS = ("data.batch_size", "data.eval_batch_size", "data.num_workers", "data.allow_outside_root",
                "data.source", "trainer.device", "trainer.precision", "trainer.threads")
# data=table: reading another manifest (predict, export); the others only together with data.path
NEW_DATA = ("data.path", "data.root", "data.encoding", "data.na_values")


@dataclass(frozen=True)
class Accepts:
    """What a command that opens a checkpoint accepts: its own `options` (top-level keys), the `editable` keys
    of the checkpoint's config, and the `new_data` keys that read another manifest. Its configs/<command>.yaml
    holds exactly these keys (tests/cli/test_checkpoint_opener.py). `exports`: it reads an exported weights
    folder as well as a .pt; `one_process`: it refuses a launcher (every rank would write the same files)."""

    command: str
    options: tuple[str, ...]
    editable: tuple[str, ...]
    new_data: tuple[str, ...] = ()
    exports: bool = True
    one_process: bool = True


@dataclass
class Opened:
    """A checkpoint opened for a command: `source` as open_source gives it, `config` its config with the user's
    overrides, validated; `reads`: the data the command reads (`split=test`, or the new manifest's path)."""

    path: Path
    source: dict
    config: DictConfig
    reads: str


def open_source(path: str | Path, trusted: Sequence[str], exports: bool = True) -> dict:
    """read_source, then check_source, then the config without its trackers (`logger`): eval, predict, export
    and mtlrun.load never build them, and the trust check does not look at them, so nothing after it (the
    validation imports every `_target_`) may see them, and no config.yaml they write carries them on."""
    source = read_source(path, exports=exports)
    check_source(source, [str(p) for p in trusted], source["label"])
    return {**source, "config": without_trackers(source["config"])}


def open_checkpoint(cfg: DictConfig, accepts: Accepts, typed: Sequence[str], options: Sequence[str] = ()) -> Opened:
    """`cfg.checkpoint` opened for the command `accepts` declares: read and trust-checked (open_source), the
    overrides the user `typed` applied where `accepts` allows them, every problem listed at once with the
    command's own (`options`), then its threads; `data.batch_size` alone sets the eval batch size."""
    what = accepts.command
    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.checkpoint:
        folder = ", or the folder of `mtlrun export format=weights`" if accepts.exports else ""
        raise UsageError(f"mtlrun {what} needs checkpoint=PATH (e.g. outputs/train/<date>/<time>/checkpoints/best.pt"
                         f"{folder})")
    options = [*([f"split={cfg.split}: valid: {', '.join(SPLITS)}"] if cfg.split not in SPLITS else []), *options]
    if accepts.one_process and distributed.dist_info().enabled:
        raise UsageError(f"mtlrun {what} runs in one process; start it without torchrun / srun")
    path = Path(cfg.checkpoint).expanduser().resolve()
    source = open_source(path, cfg.get("trusted_targets") or [], accepts.exports)
    new_data = cfg.data.get("path") is not None
    data_keys = [o for o in typed if o.split("=", 1)[0].lstrip("+~") in accepts.new_data]
    if data_keys and not new_data:
        raise UsageError("data.root / data.encoding / data.na_values: only with data.path=NEW_MANIFEST (the rows to "
                         "read)")
    run_cfg = apply_overrides(source["config"], cfg, [o for o in typed if o not in data_keys], accepts.editable,
                              what, skip=accepts.options)
    validate_eval(run_cfg, accepts.editable, options)  # after the trust check: it imports the config's targets
    apply_threads(run_cfg.trainer.threads)
    if cfg.data.batch_size is not None and cfg.data.eval_batch_size is None:
        run_cfg.data.eval_batch_size = cfg.data.batch_size  # for these commands "batch size" is the eval batch size
    reads = str(Path(cfg.data.path).expanduser().resolve()) if new_data else f"split={cfg.split}"
    return Opened(path, source, run_cfg, reads)


def open_predictor(cfg: DictConfig, accepts: Accepts, typed: Sequence[str],
                   options: Sequence[str] = ()) -> tuple[Predictor, Opened]:
    """open_checkpoint, then the model with its weights (predict, export): on the data of `data.path` (a new
    manifest, read with the checkpoint's fitted preprocessing) or of the checkpoint's own config."""
    opened = open_checkpoint(cfg, accepts, typed, options)
    run_cfg, data = opened.config, None
    if cfg.data.get("path") is not None:
        data = prediction_data(run_cfg, opened.source["data"], Path(cfg.data.path).expanduser(), cfg.data.root,
                               cfg.data.encoding, cfg.data.get("na_values"))
    predictor = build_predictor(run_cfg, opened.source, data=data, device=str(run_cfg.trainer.device),
                                precision=str(run_cfg.trainer.precision))
    return predictor, opened
