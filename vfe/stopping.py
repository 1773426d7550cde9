"""Stopping a run on a signal: after the batch in hand, on every rank, with no collective.

SIGTERM (SLURM at preemption or its time limit, Kubernetes), SIGINT (Ctrl-C) and SIGUSR1
(SLURM's `--signal`) all mean the same: stop after the batch in hand, leave no partial file, and
exit 128 + the signal's number, so that the same command resumes. The handler only records the
signal and passes it on to the ranks this process launched. vfe replaces Lightning's handlers
because Lightning's SIGTERM handler broadcasts inside the handler, which fails once any rank has
finished, and its SLURM SIGUSR1 handler saves a training checkpoint. A second Ctrl-C ends the
process at once.
"""

import os
import signal
import subprocess
from collections.abc import Iterable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StoppedBySignal(Exception):
    """A stop signal arrived: the run stopped after the batch in hand."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """The process's stop request: set by the signal handler, read after each batch."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._children: list[subprocess.Popen] = []

    def install(self, children: Iterable[subprocess.Popen] = ()) -> None:
        """Handle the stop signals (main thread only), passing them on to `children`."""
        self._children = list(children)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def reset(self) -> None:
        self.signum = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            os.write(2, b"vfe: interrupted again: stopping now\n")
            os._exit(128 + signum)
        if self.signum is None:
            self.signum = signum
        for child in self._children:
            if child.poll() is None:
                child.send_signal(signum)

    def raise_if_requested(self, done: str) -> None:
        """Raise `StoppedBySignal` if a stop signal arrived; `done` says what was finished."""
        if self.signum is None:
            return
        name = signal.Signals(self.signum).name
        raise StoppedBySignal(
            self.signum,
            f"stopped by {name}; {done}; run the same command again to resume",
        )


# Signal handlers belong to the process, so there is one request per process.
STOP_REQUEST = StopRequest()
