"""Feature files on disk: written so that they are complete or absent, and the temporaries a
killed run leaves cleaned up."""

import contextlib
import os
import time
from pathlib import Path

import numpy as np

TEMPORARY_SUFFIX = ".vfe-tmp"
# A temporary is written and renamed within seconds; one this old belongs to a killed run.
STALE_TEMPORARY_SECONDS = 600


def save_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `path` so that it is either absent or complete: temporary file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        with open(temporary, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def remove_stale_temporaries(output_dir: Path) -> None:
    """Delete temporaries a killed run left (never valid outputs). Only old ones go: a run
    writing into the same folder right now owns the fresh ones."""
    if not output_dir.is_dir():
        return
    oldest_kept = time.time() - STALE_TEMPORARY_SECONDS
    for stale in output_dir.rglob(f".*{TEMPORARY_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):  # its run renamed it meanwhile
            if stale.stat().st_mtime < oldest_kept:
                stale.unlink()
