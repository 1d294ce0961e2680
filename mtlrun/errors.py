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
