"""SIGINT / SIGTERM / SIGUSR1 during training: stop after the current step with a checkpoint, never mid-save.

SIGUSR1 is what SLURM sends ahead of a time limit or preemption (`sbatch --signal=USR1@120`, submitit's
default); SIGTERM what it sends at the end. Under DDP the ranks agree at the next log step (Trainer._should_stop),
so every rank stops at the same step, even when only one of them got the signal.

The first signal asks the loop to stop at the next step boundary (the trainer saves last.pt, then raises
TrainingInterrupted, which the CLI turns into exit 128 + signal). A second signal stops at once without
saving, unless a checkpoint is being written: then that write finishes first (the file on disk is always
whole, written through a temp file). Once the run is leaving after a signal, further signals are ignored,
so a late one cannot turn the exit into a traceback.
"""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager
from pathlib import Path

import torch

from mtlrun import distributed

log = logging.getLogger("mtlrun")
HANDLED = (signal.SIGINT, signal.SIGTERM, *((signal.SIGUSR1,) if hasattr(signal, "SIGUSR1") else ()))


class TrainingInterrupted(Exception):
    """A stop asked for by SIGINT/SIGTERM/SIGUSR1. `path`: the checkpoint saved on the way out, or None when a
    second signal stopped the run before it could save (`last_good`: the newest checkpoint on disk)."""

    def __init__(self, signum: int, path: Path | None, last_good: Path | None = None):
        self.signum, self.path, self.last_good = signum, path, last_good
        super().__init__(signal.Signals(signum).name)


class StopSignals:
    """The stop requests of one `fit`. `last_good()` names the checkpoint a second signal leaves behind."""

    def __init__(self, last_good, announce: bool = True):
        self.signum: int | None = None
        self._saving = False
        self._last_good = last_good
        self._announce = announce
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            if self._announce:
                log.warning(f"{name} received: saving a checkpoint after this step")
        elif self._saving:
            log.warning(f"{name} received again: stopping once the checkpoint being written is complete")
        else:
            raise TrainingInterrupted(self.signum, None, self._last_good())

    def agreed(self, dist, device, at_log_step: bool) -> bool:
        """Whether to stop, the same answer on every rank: in one process at once, under DDP only at log steps
        (one tiny all-reduce of the signal number, so a signal that reached one rank stops them all at the
        same step)."""
        if not dist.enabled:
            return self.signum is not None
        if not at_log_step:
            return False
        flag = torch.tensor([self.signum or 0], device=device)
        distributed.reduce_over_ranks_([flag], "max")
        if flag.item():
            self.signum = int(flag.item())
        return self.signum is not None

    def install(self) -> None:
        for sig in HANDLED:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test thread): no handlers
                pass

    def restore(self, leaving: bool) -> None:
        """Put back the previous handlers, or ignore further signals when leaving after a stop."""
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if leaving else handler)

    @contextmanager
    def saving(self):
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
