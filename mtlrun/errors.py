"""Errors that end a run with a short message instead of a traceback.

The CLI prints `error: <message>` and exits with `exit_code`; HYDRA_FULL_ERROR=1 shows the traceback.
"""


class MtlrunError(Exception):
    exit_code = 1


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


class WriteError(MtlrunError):
    """An OS error (disk full, permissions, read-only file system) while writing a run's file. Files are
    written through a temp file and os.replace, so the previous version is untouched."""

    exit_code = 1

    def __init__(self, path, error: OSError):
        import os

        self.path, self.error = path, error
        reason = error.strerror or str(error) or type(error).__name__
        before = (f"the previous {path.name} is intact" if os.path.exists(path)
                  else f"no earlier {path.name} existed")
        super().__init__(f"{reason[0].lower()}{reason[1:]} writing {path}; {before}")
