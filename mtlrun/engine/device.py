"""Device choice and mixed precision."""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch

from mtlrun.errors import UsageError

AMP_DTYPES = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` picks cuda > mps > cpu; an explicit device that is not there is a usage error."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"trainer.device={name} but CUDA is not available here; use trainer.device=auto or cpu")
    if name == "mps" and not _mps_available():
        raise UsageError("trainer.device=mps but MPS is not available here; use trainer.device=auto or cpu")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


def autocast(device: torch.device, precision: str):
    dtype = AMP_DTYPES[str(precision)]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def channels_last(batch: dict) -> dict:
    """The batch with its image inputs (4-D floating tensors) in channels_last memory format, as a
    channels_last model wants them (trainer.channels_last): convolutions then skip a layout conversion."""
    inputs = {m: x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 and x.is_floating_point() else x
              for m, x in batch["inputs"].items()}
    return {**batch, "inputs": inputs}


def step_scheduler(scheduler, scaler_may_have_skipped: bool) -> None:
    """scheduler.step() after an optimizer step. The fp16 gradient scaler skips an optimizer step whose gradients
    overflow at its scale, as the first ones often do at its initial scale; the schedule advances all the same, as
    the trainer's global_step does (a resumed run counts the same steps). torch's warning at a first scheduler step
    whose optimizer has not stepped is about calling the two in the wrong order, which this is not."""
    if not scaler_may_have_skipped:
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
        scheduler.step()
