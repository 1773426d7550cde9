"""Feature files on disk: written so that they are complete or absent, and the temporaries a
killed run leaves cleaned up."""

import contextlib
import time
from pathlib import Path

import numpy as np

from vfe.destinations import TEMPORARY_SUFFIX, temporary_owner, write_atomically
from vfe.planning.owners import process_is_gone

# A temporary is written and renamed within seconds; one this old whose process is not known
# to be alive belongs to a killed run.
STALE_TEMPORARY_SECONDS = 600


def save_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `path` so that it is either absent or complete (`vfe.destinations`)."""
    write_atomically(path, lambda file: np.savez(file, **arrays))


def remove_stale_temporaries(output_dir: Path) -> None:
    """Delete temporaries a killed run left anywhere in the folder (never valid outputs; claims'
    temporaries included). A temporary goes when its
    process on this host is gone, or, made elsewhere, when it is old: a run writing into the
    same folder right now (even one paused for hours) owns its own."""
    if not output_dir.is_dir():
        return
    oldest_kept = time.time() - STALE_TEMPORARY_SECONDS
    for stale in output_dir.rglob(f".*{TEMPORARY_SUFFIX}"):
        owner = temporary_owner(stale.name)
        with contextlib.suppress(FileNotFoundError):  # its run renamed it meanwhile
            gone = process_is_gone(*owner) if owner else None
            if gone or (gone is None and stale.stat().st_mtime < oldest_kept):
                stale.unlink()
