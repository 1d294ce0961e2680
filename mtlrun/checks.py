"""Value checks shared by every layer (the bottom one: it imports only mtlrun.errors).

`is_int` / `is_real` / `is_number` answer a question (Hydra hands `true` over as a bool, which Python counts
as an int, `nan` as float nan and `abc` as a string); the `check_*` helpers raise a UsageError that names
the config key (e.g. `backbone.audio.kernel`) and says what is valid.
"""

from __future__ import annotations

import math

from mtlrun.errors import UsageError


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value) -> bool:
    """An int or a float, NaN and inf included (bools excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float that a float can hold (an integer of 400 digits, as JSON may carry, is not)."""
    try:
        return is_real(value) and math.isfinite(value)
    except OverflowError:
        return False


def check_range(key: str, value, low: int, high: int | None = None, why: str = "") -> int:
    if not is_int(value) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise UsageError(f"{key}={value}: must be an integer {bound}{why}")
    return value


def check_dropout(key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise UsageError(f"{key}={value}: must be a number in [0, 1)")
    return float(value)


def check_widths(key: str, values, example: str = "[16, 32, 64]") -> tuple[int, ...]:
    """A non-empty list of positive integers (channels per stage, hidden widths...)."""
    try:
        widths = tuple(values)
    except TypeError:
        widths = ()
    if not widths or not all(is_int(c) and c >= 1 for c in widths):
        raise UsageError(f"{key}={values}: must be a non-empty list of positive integers, e.g. {example}")
    return widths


def import_extra(module: str, extra: str, feature: str):
    """`module` imported, or a UsageError saying which `pip install "mtlrun[extra]"` brings it (for `feature`,
    e.g. `backbone/image=timm`): the optional extras are imported here, when a feature needs them."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f'{feature} needs the {module} package, which is not installed: '
                         f'pip install "mtlrun[{extra}]"  ({exc})') from exc
