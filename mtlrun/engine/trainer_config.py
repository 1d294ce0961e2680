"""The `trainer` section (configs/trainer/default.yaml), typed: every key, its type, what is valid, its doc.

The Trainer reads a `TrainerConfig`, never an untyped node. Validation (`mtlrun.schema.check`) uses these
same fields to list every bad value at once before anything is built; a test keeps the YAML and this schema
equal. A key a config lacks takes its default here, so a checkpoint written before the key existed loads.
"""

# no `from __future__ import annotations`: mtlrun.schema reads the fields' types at run time
from dataclasses import dataclass, fields
from typing import Optional, Union

from omegaconf import DictConfig, OmegaConf

from mtlrun.schema import MONITOR_MODES, PRECISIONS, setting

__all__ = ["EarlyStopping", "TrainerConfig"]


@dataclass
class EarlyStopping:
    patience: Optional[int] = setting(None, "epochs without improvement of the monitor", ge=1, null="off")
    min_delta: float = setting(0.0, "how much the monitor must improve to count as an improvement", ge=0)


@dataclass
class TrainerConfig:
    max_epochs: int = setting(8, "epochs to train", ge=1)
    device: str = setting("auto", "auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps", rule="device")
    precision: Union[int, str] = setting(32, "32 | bf16 | 16 (fp16 with loss scaling)", choices=PRECISIONS)
    compile: bool = setting(False, "torch.compile the training forward/backward")
    channels_last: bool = setting(False, "model and image batches in channels_last memory format (faster "
                                         "convolutions on CUDA, with precision=bf16/16 above all)")
    accumulate: int = setting(1, "micro-batches per optimizer step", ge=1)
    grad_clip: Optional[float] = setting(None, "max global gradient norm", gt=0, null="off")
    limit_train_batches: Union[int, float, None] = setting(None, "batches per training epoch", rule="limit")
    limit_eval_batches: Union[int, float, None] = setting(None, "batches per evaluation", rule="limit")
    log_every_n_steps: int = setting(25, "how often losses reach the host (progress bar, NaN check)", ge=1)
    conflict: bool = setting(False, "log gradient conflict between tasks at the shared representation, at log steps")
    skip_nonfinite: bool = setting(False, "skip steps whose loss or gradients are NaN/inf instead of stopping")
    monitor: str = setting("auto", "the metric that picks best.pt (auto: the mean relative change of each "
                                   "task's first metric against the first validation); checked once built")
    monitor_mode: str = setting("auto", "auto (from the metric's direction) | max | min", choices=MONITOR_MODES)
    early_stopping: EarlyStopping = setting(EarlyStopping(), "stop when the monitor stops improving")
    progress_bar: bool = setting(True, "a tqdm bar per epoch")
    deterministic: bool = setting(False, "torch.use_deterministic_algorithms")
    sync_batchnorm: bool = setting(False, "DDP on CUDA only: synchronise batch-norm statistics across ranks")
    threads: Optional[int] = setting(None, "intra-op CPU threads per process (mtlrun/engine/threads.py)", ge=1,
                                     null="auto")

    @classmethod
    def from_config(cls, node) -> "TrainerConfig":
        """From a validated trainer node (DictConfig or dict); keys this version does not know are ignored."""
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        stopping = values.pop("early_stopping", None) or {}
        return cls(**values, early_stopping=EarlyStopping(**{k: v for k, v in stopping.items()
                                                            if k in {f.name for f in fields(EarlyStopping)}}))
