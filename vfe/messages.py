"""vfe's own one-line messages (Lightning's and the libraries' are hidden unless --verbose)."""

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

_quiet: list[bool] = [False]


@rank_zero_only
def say(message: str) -> None:
    """`vfe: message` on stderr, from rank 0 only (not inside `quiet_reports`)."""
    if not _quiet[0]:
        print(f"vfe: {message}", file=sys.stderr, flush=True)


@rank_zero_only
def say_more(lines: list[str]) -> None:
    """Lines that go with the last `say` (indented details), from rank 0."""
    if not _quiet[0]:
        print("\n".join(lines), file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet_reports(quiet: bool = True) -> Iterator[None]:
    """`say` prints nothing meanwhile (warnings still do): for `vfe.extract` into a temporary
    folder, whose paths mean nothing to the caller (failures are in its exception)."""
    before = _quiet[0]
    _quiet[0] = quiet
    try:
        yield
    finally:
        _quiet[0] = before


_command_started: list[float] = []  # perf_counter() when the command began (vfe predict)


def mark_command_start() -> None:
    """Remember when the command began (the process's start where the system says, so the
    imports count), so the summary can say what start-up took."""
    try:  # Linux: the process's start in clock ticks after boot, and the time since boot
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime_seconds = float(Path("/proc/uptime").read_text().split()[0])
        age = max(0.0, uptime_seconds - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        age = 0.0
    _command_started[:] = [time.perf_counter() - age]


def seconds_since_command_start() -> float | None:
    return time.perf_counter() - _command_started[0] if _command_started else None


def rate_text(count: int, seconds: float) -> str:
    """`count / seconds` for a progress line, never rounded to zero: `12.3`, `0.034`."""
    rate = count / max(seconds, 1e-9)
    return f"{rate:.1f}" if rate >= 0.1 or count == 0 else f"{rate:.2g}"


@rank_zero_only
def warn(message: str) -> None:
    """`vfe: warning: message` on stderr, from rank 0 (a library warning's source line and
    stack are not for users)."""
    print(f"vfe: warning: {message}", file=sys.stderr, flush=True)


def say_on_this_rank(message: str) -> None:
    """`vfe: message` on stderr, from whichever rank it concerns."""
    print(f"vfe: {message}", file=sys.stderr, flush=True)


def count(number: int, noun: str) -> str:
    """`1 video`, `2 videos`."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
