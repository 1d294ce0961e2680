"""Option checks shared by encoders, fusions and sharing architectures: each raises a UsageError that
names the config key (e.g. `backbone.audio.kernel`) and says what is valid."""

from __future__ import annotations

from mtlrun.errors import UsageError


def check_range(key: str, value, low: int, high: int | None = None, why: str = "") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
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
    if not widths or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in widths):
        raise UsageError(f"{key}={values}: must be a non-empty list of positive integers, e.g. {example}")
    return widths
