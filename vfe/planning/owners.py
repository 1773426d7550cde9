"""Which runs are alive: every run that writes into an output folder records its owner there,
and keeps the record's time fresh while it runs, so that other runs sharing the folder can tell
its work in progress (parts, claims, temporaries) from what a killed run left.

`<output_dir>/.vfe-runs/<run id>.json` holds the run id, the host, the process id of the run's
rank 0 and that process's start time; a thread touches it every `HEARTBEAT_SECONDS`. A run is
gone when its record is gone (it ended), when its host is this one and that process is not
running (or is another process with the same id), or, on another host, when the record has not
been touched for `STALE_SECONDS`. A paused run (SIGSTOP, a suspended job) on this host stays
alive; on another host it counts as gone after `STALE_SECONDS`.
"""

import contextlib
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vfe.destinations import host_label, write_atomically

RUNS_DIR_NAME = ".vfe-runs"  # one of `vfe.destinations.RESERVED_NAMES`
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 1800.0  # 30 minutes without a heartbeat: the run's host or process is lost


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), telling a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return fields[19].decode()  # field 22 of stat; fields[0] is field 3


def process_is_gone(host: str, pid: int, started: str | None = None) -> bool | None:
    """True if the process is known not to run (this host, no such process, or another
    process under its id), False if it runs, None if it is on another host."""
    if host != host_label():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: it exists
        pass
    if started is not None:
        now = _process_start(pid)
        return now is not None and now != started
    return False


@dataclass(frozen=True)
class RunOwner:
    run_id: str
    host: str
    pid: int
    process_start: str | None
    started_seconds: float  # time.time() when the run began


def new_run_id() -> str:
    """Unique across hosts and processes: time, host, pid and a random suffix."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{host_label()}-{os.getpid()}-{secrets.token_hex(3)}"


def this_run(run_id: str) -> RunOwner:
    return RunOwner(run_id, host_label(), os.getpid(), _process_start(os.getpid()), time.time())


def owner_file(output_dir: Path, run_id: str) -> Path:
    return Path(output_dir) / RUNS_DIR_NAME / f"{run_id}.json"


def register(output_dirs: list[Path], owner: RunOwner) -> None:
    """Record the run as the owner of its work in each output folder."""
    text = json.dumps(asdict(owner)).encode()
    for output_dir in output_dirs:
        write_atomically(owner_file(output_dir, owner.run_id), lambda file: file.write(text))


def unregister(output_dirs: list[Path], run_id: str) -> None:
    for output_dir in output_dirs:
        owner_file(output_dir, run_id).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # other runs' records are there
            (Path(output_dir) / RUNS_DIR_NAME).rmdir()


def run_is_live(output_dir: Path, run_id: str) -> bool:
    """Whether the run that recorded itself as `run_id` in `output_dir` may still be working."""
    path = owner_file(output_dir, run_id)
    try:
        touched = path.stat().st_mtime
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return False  # it ended (or never started writing here)
    except (OSError, ValueError):  # unreadable: the heartbeat alone decides
        record = {}
    gone = None
    if isinstance(record, dict) and "host" in record and "pid" in record:
        gone = process_is_gone(record["host"], int(record["pid"]), record.get("process_start"))
    if gone is not None:
        return not gone
    return time.time() - touched < STALE_SECONDS


def runs_recorded(output_dir: Path) -> list[str]:
    folder = Path(output_dir) / RUNS_DIR_NAME
    return sorted(path.stem for path in folder.glob("*.json")) if folder.is_dir() else []


class Heartbeat:
    """Touches the run's owner records every `HEARTBEAT_SECONDS` from a daemon thread, for as
    long as the run lives (a long batch or a slow rank never makes it look gone)."""

    def __init__(self, output_dirs: list[Path], run_id: str) -> None:
        self.files = [owner_file(output_dir, run_id) for output_dir in output_dirs]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vfe-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            for path in self.files:
                with contextlib.suppress(OSError):  # removed at the end, or a full disk
                    os.utime(path)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def forget_gone_runs(output_dir: Path) -> None:
    """Remove the owner records of runs that are gone (killed without ending)."""
    for run_id in runs_recorded(output_dir):
        if not run_is_live(output_dir, run_id):
            owner_file(output_dir, run_id).unlink(missing_ok=True)
