"""Stopping a run on request, as cluster schedulers ask: SIGTERM (SLURM preemption and ``scancel``,
Kubernetes pod deletion: SIGKILL follows after a grace period, 30 s by default), SIGINT (Ctrl-C) and SIGUSR1
(SLURM's ``--signal=USR1@SECONDS``, sent that long before the time limit).

The handler only records the signal. The training loop finishes the step in progress (or the epoch's
evaluation), writes a checkpoint at that step, and the command exits with 128 + the signal's number: 143
(SIGTERM), 130 (SIGINT), 138 (SIGUSR1). Under torchrun the ranks agree after every step with one all-reduce
(MAX) of the signal each has received, so all of them stop at the same step, whichever got the signal.
A second SIGINT stops at once, without a checkpoint (exit 130).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

from peffnet.training import distributed

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Stopped(Exception):
    """The run stopped at a signal after writing a checkpoint; the message says where (one line)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal."""
        return 128 + self.signum


class StopRequests:
    """While active (``with StopRequests(...):``), SIGTERM, SIGINT and SIGUSR1 are recorded instead of ending
    the process; :meth:`agreed` is what the loop asks after every step. Handlers can only be set from the main
    thread: elsewhere the signals keep their previous handlers."""

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.signum:
            self.signum = signum
            if self.announce:
                print(f"{signal_name(signum)} received: stopping after this step, with a checkpoint",
                      file=sys.stderr, flush=True)

    def agreed(self) -> int:
        """The signal any rank has received (the largest number if several), ``0`` for none: the same answer
        on every rank (one scalar all-reduce on the host)."""
        return distributed.all_reduce_max(self.signum)

