"""The exception the command line turns into a one-line message, and what each exit status
means."""

from enum import IntEnum


class VfeError(Exception):
    """A problem with what the user asked for or set up, found before any work (a bad option, a
    missing file or library, weights that cannot be had, existing files made otherwise): one
    line, exit 2. What happens during a run has its own exceptions (a bad video is a failure
    record; `StoppedBySignal`, `RankLost`)."""


class ExitCode(IntEnum):
    """`vfe predict`'s exit status; a stop signal exits 128 + its number (SIGINT 130, SIGUSR1
    138, SIGTERM 143)."""

    OK = 0  # every video written or skipped
    VIDEOS_FAILED = 1  # some video could not be decoded (failures.jsonl); the others written
    USAGE = 2  # a bad option or set-up, found before any work: one line says which
    RANK_LOST = 3  # another rank died or stopped reporting; its videos are not written
    CRASHED = 4  # an error in vfe or the libraries (a bug, CUDA out of memory): traceback
