"""Which videos a run extracts: those without a feature file made with the same settings."""

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfe.paths import VideoEntry, output_path_for
from vfe.provenance import first_difference, read_provenance

CHOICES = "rerun with --overwrite to redo such files, or write to another --output_dir"


@dataclass
class RunPlan:
    todo: list[VideoEntry]
    num_skipped: int
    problem: str | None  # why the run must not start: an existing file made otherwise
    run_id: str = ""  # names this run's lines in failures.jsonl


def plan_run(
    videos: list[VideoEntry], output_dir: Path, overwrite: bool, wanted: dict[str, Any]
) -> RunPlan:
    """Skip a video only if its .npz exists and records the settings `wanted` and the video as
    it is now; any other existing file stops the run (a file made otherwise is never kept
    silently), unless `overwrite`."""
    todo: list[VideoEntry] = []
    num_skipped = 0
    for entry in videos:
        path = output_path_for(output_dir, entry.relative_path)
        if overwrite or not path.exists():
            todo.append(entry)
            continue
        try:
            existing = read_provenance(path)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            return RunPlan([], 0, f"{path} cannot be read ({error}); {CHOICES}")
        if existing is None:
            return RunPlan([], 0, f"{path} records no settings (made by an earlier vfe); {CHOICES}")
        difference = first_difference(existing, wanted, entry.size_bytes, entry.mtime_ns)
        if difference is not None:
            return RunPlan([], 0, f"{path} was made otherwise: {difference}; {CHOICES}")
        num_skipped += 1
    return RunPlan(todo, num_skipped, None)
