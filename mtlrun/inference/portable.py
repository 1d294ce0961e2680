"""A trained model in formats that need no mtlrun: safetensors weights, a torch.export program (pt2), TorchScript
and ONNX (`mtlrun export`).

pt2, TorchScript and ONNX take positional tensors and return a tuple, in a fixed order (`PositionalModel`):
    inputs:  one tensor per modality, in the data's modality order (the batch layouts of mtlrun.data.base);
             then, for a model with several modalities, one bool tensor [B] per modality, in the same order
             (True: the sample has it; all True for complete samples)
    outputs: one tensor per task, in the config's task order (the raw outputs: logits, values, maps)
export.json lists both orders, the names, shapes and dtypes. The batch axis is dynamic.

Each export is checked: the exported model runs on a batch of the data next to the PyTorch one (and, to catch
a batch size baked in by tracing, on a smaller batch), and the largest absolute difference per task is
reported; above `tolerance` the export fails.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from mtlrun.engine.records import atomic_write_bytes
from mtlrun.errors import MtlrunError, UsageError, WriteError, os_error_behind

FORMATS = ("weights", "pt2", "torchscript", "onnx")


class ExportError(MtlrunError):
    """The model cannot be written in the asked format, or the written model computes something else."""


class PositionalModel(nn.Module):
    """`model(inputs: dict, modality_mask: dict) -> dict` as `forward(*tensors) -> tuple` (order: module doc)."""

    def __init__(self, model: nn.Module, modalities: list[str], tasks: list[str]):
        super().__init__()
        self.model, self.modalities, self.tasks = model, list(modalities), list(tasks)
        self.masks = len(self.modalities) > 1

    def input_names(self) -> list[str]:
        return [*self.modalities, *([f"{m}_mask" for m in self.modalities] if self.masks else [])]

    def arguments(self, batch: dict) -> tuple[torch.Tensor, ...]:
        """The positional inputs of a batch dict (masks all True where the batch has none)."""
        inputs = [batch["inputs"][m] for m in self.modalities]
        if not self.masks:
            return tuple(inputs)
        given = batch.get("modality_mask") or {}
        n = len(inputs[0])
        masks = [given.get(m, torch.ones(n, dtype=torch.bool, device=inputs[0].device)) for m in self.modalities]
        return (*inputs, *masks)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.modalities)
        inputs = dict(zip(self.modalities, tensors[:n]))
        mask = dict(zip(self.modalities, tensors[n:])) if self.masks else None
        out = self.model(inputs, modality_mask=mask)
        return tuple(out[t] for t in self.tasks)


def write_weights(model: nn.Module, path: Path) -> None:
    """The state dict as safetensors (tensors shared between modules are written once; safetensors writes a
    temp file and renames it). A failed write is a WriteError: safetensors gives its OS error as text."""
    from safetensors.torch import save_model

    try:
        save_model(model, str(path))
    except OSError as exc:
        raise WriteError(path, exc) from exc
    except Exception as exc:  # SafetensorError: "... I/O error: Read-only file system (os error 30) ..."
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        raise WriteError(path, OSError(int(code[1]), os.strerror(int(code[1])))) from exc


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _dynamic_batch(args: tuple) -> tuple:
    """torch.export's dynamic_shapes for forward(*tensors): one tuple argument, so the shapes nest in a 1-tuple."""
    return (tuple({0: torch.export.Dim.DYNAMIC} for _ in args),)


def _write_program(path: Path, cannot: str, capture, save) -> None:
    """`save(capture(), buffer)`, then the bytes written to `path` atomically (a failed write: a WriteError naming
    the file). A model the exporter cannot take is an ExportError: `cannot` (format and exporter) and the reason.
    The exporter's warnings (e.g. TracerWarnings) are silenced: the check after the export decides whether the
    written model computes what the PyTorch one does."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = capture()
        buffer = io.BytesIO()
        save(program, buffer)
    except Exception as exc:
        raise ExportError(f"{cannot}: {first_line(exc)}") from None
    atomic_write_bytes(path, buffer.getvalue())


def to_pt2(wrapper: PositionalModel, args: tuple, path: Path) -> None:
    """Write model.pt2: the model as a torch.export ExportedProgram with a dynamic batch axis, which
    `torch.export.load(path).module()` runs with torch alone: TorchScript's successor (the torch this runs on may
    warn that torch.jit is deprecated)."""
    _write_program(path, "format=pt2: torch.export cannot export this model",
                   lambda: torch.export.export(wrapper, args, dynamic_shapes=_dynamic_batch(args)), torch.export.save)


def run_pt2(path: Path, args: tuple) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return tuple(torch.export.load(str(path)).module()(*args))


def to_torchscript(wrapper: PositionalModel, args: tuple, path: Path) -> None:
    _write_program(path, "format=torchscript: torch.jit.trace cannot trace this model",
                   lambda: torch.jit.trace(wrapper, args, check_trace=False, strict=False), torch.jit.save)


def run_torchscript(path: Path, args: tuple) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return tuple(torch.jit.load(str(path), map_location="cpu")(*args))


def to_onnx(wrapper: PositionalModel, args: tuple, path: Path) -> tuple[str, list[str]]:
    """Write model.onnx with a dynamic batch axis: the dynamo exporter (torch.export), else the TorchScript-based
    one (e.g. for a packed-sequence GRU, which torch.export does not trace); returns which one wrote it and why
    the ones before it failed."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError('format=onnx needs onnx and onnxscript: pip install "mtlrun[export]"') from None
    names, outputs = wrapper.input_names(), list(wrapper.tasks)
    attempts = {
        "dynamo": {"dynamo": True, "report": False, "dynamic_shapes": _dynamic_batch(args)},
        "torchscript-based": {"dynamo": False, "dynamic_axes": {n: {0: "batch"} for n in [*names, *outputs]}},
    }
    errors = []
    for exporter, options in attempts.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=outputs, verbose=False,
                                  **options)
            return exporter, errors
        except Exception as exc:
            if os_error_behind(exc) is not None:  # the file could not be written: no other exporter would do better
                raise WriteError(path, os_error_behind(exc)) from exc
            errors.append(f"{exporter} exporter: {first_line(exc)}")
    raise ExportError("format=onnx: torch.onnx.export cannot export this model; " + "; ".join(errors))


def run_onnx(path: Path, wrapper: PositionalModel, args: tuple) -> tuple[torch.Tensor, ...]:
    try:
        import onnxruntime
    except ImportError:
        raise UsageError('format=onnx is checked with onnxruntime: pip install "mtlrun[export]"') from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    given = dict(zip(wrapper.input_names(), args))
    feed = {i.name: given[i.name].cpu().numpy() for i in session.get_inputs()}  # an unused input may be dropped
    return tuple(torch.from_numpy(o) for o in session.run(list(wrapper.tasks), feed))


def compare(tasks: list[str], reference: tuple, exported: tuple) -> dict[str, float]:
    """max |exported - reference| per task (inf where the shapes differ)."""
    out = {}
    for t, a, b in zip(tasks, reference, exported):
        a, b = a.detach().float().cpu(), b.detach().float().cpu()
        out[t] = float((a - b).abs().max()) if a.shape == b.shape and a.numel() else (0.0 if a.shape == b.shape
                                                                                        else float("inf"))
    return out


def first_line(exc: BaseException) -> str:
    """The line that says what went wrong: torch.onnx's own errors give it under "## Exception summary"."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if "## Exception summary" in lines and lines.index("## Exception summary") + 1 < len(lines):
        return lines[lines.index("## Exception summary") + 1][:400]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:400]
