"""Errors that end a run with a short message instead of a traceback.

The CLI prints `error: <message>` and exits with `exit_code`; HYDRA_FULL_ERROR=1 shows the traceback.
`Problems` collects config problems so that validation lists them all at once (a ConfigError).
"""


import os
import sys


class MtlrunError(Exception):
    exit_code = 1


def exit_on(exc: "MtlrunError", also=None) -> None:
    """End the command for `exc` the way every mtlrun command does: `error: <message>` on stderr (and to
    `also(message)`, e.g. the run's log file) and its exit code, no traceback; with HYDRA_FULL_ERROR=1 the
    exception itself goes on up. Call it from the `except` block that caught `exc`."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    if also is not None:
        also(f"error: {exc}")
    raise SystemExit(exc.exit_code) from None


class UsageError(MtlrunError):
    """Bad config value, unknown name, unusable file: the user can fix it from the command line."""

    exit_code = 2


class ConfigError(UsageError):
    """Several config problems found at once; each line names the key and what would be valid."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid config ({len(self.problems)} problem(s)):\n{lines}")


class NonFiniteLossError(MtlrunError):
    """Training produced NaN/inf; the run stops before the broken weights reach a checkpoint."""

    exit_code = 1


class TrackerError(MtlrunError):
    """An experiment tracker (logger=[...]) cannot be used: its server or store is unreachable or unusable.
    Raised before the first step (logger.<name>.on_error=continue trains on without it instead)."""

    exit_code = 1


class WriteError(MtlrunError):
    """An OS error (disk full, permissions, read-only file system) while writing a file or making a folder:
    `<path>: cannot write there: <strerror>`. Files are written through a temp file and os.replace, so the
    previous version of a file is untouched (the message says so where there is one)."""

    exit_code = 1

    def __init__(self, path, error: OSError):
        from pathlib import Path

        self.path, self.error = Path(path), error
        reason = error.strerror or str(error) or type(error).__name__
        intact = f"; the previous {self.path.name} is intact" if self.path.is_file() else ""
        super().__init__(f"{self.path}: cannot write there: {reason}{intact}")


def os_error_behind(exc: BaseException) -> OSError | None:
    """The OSError that caused `exc`, if any: libraries answer a failed write with their own error (torch's
    zip writer raises a RuntimeError "enforce fail at inline_container.cc" while the OSError is handled)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class RunDirRefused(UsageError):
    """A run dir or output folder that holds another run's records, or that a live run holds: nothing may be
    written there, not even a failed sweep job's error record."""


class Problems:
    """Config problems found so far, reported all at once (ConfigError) instead of one per run.

    Each problem is one line naming the key and what would be valid. `max_shown` caps the lines of one
    `group` (e.g. the bad cells of one column): past it, one `... and N more like the above` line. Without
    a cap every problem is listed, in the order found."""

    def __init__(self, max_shown: int | None = None):
        self.max_shown = max_shown
        self._shown: dict[object, list[str]] = {}
        self._counts: dict[object, int] = {}

    def add(self, message: str, group=None) -> None:
        """`group` (with max_shown): problems of one kind; by default the message itself."""
        if group is None:
            group = message if self.max_shown is not None else object()
        self._counts[group] = self._counts.get(group, 0) + 1
        shown = self._shown.setdefault(group, [])
        if self.max_shown is None or len(shown) < self.max_shown:
            shown.append(message)

    def extend(self, messages) -> None:
        for message in messages:
            self.add(message)

    def __bool__(self) -> bool:
        return bool(self._shown)

    def total(self) -> int:
        """Problems added so far, shown or not."""
        return sum(self._counts.values())

    def lines(self) -> list[str]:
        out = []
        for group, shown in self._shown.items():
            out += shown
            if self._counts[group] > len(shown):
                out.append(f"... and {self._counts[group] - len(shown)} more like the above")
        return out

    def raise_if_any(self) -> None:
        if self:
            raise ConfigError(self.lines())
