"""Which videos a run extracts: those without a feature file made with the same settings."""

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vfe.data.paths import VideoEntry, output_path_for
from vfe.planning.claims import FileIdentity, file_identity
from vfe.planning.provenance import first_difference, read_provenance

REDO = "redo"  # `_why_not_reusable`: redone without asking
CHOICES = (
    "rerun with --overwrite changed to redo only such files (keeping the others), --overwrite "
    "to redo every video, or write to another --output_dir"
)


@dataclass
class RunPlan:
    todo: list[VideoEntry]  # videos to decode
    todo_models: list[tuple[str, ...]]  # for each, the backbones that still need it
    num_skipped: dict[str, int]  # per backbone, videos already done
    problem: str | None  # why the run must not start: an existing file made otherwise
    run_id: str = ""  # names this run's lines in failures.jsonl
    # (backbone, video) -> the existing output a video to do replaces, as the listing saw it
    # (`vfe.planning.claims`: any other file there at claim time was written by another job)
    seen: dict[tuple[str, str], FileIdentity] = field(default_factory=dict)


def plan_run(
    videos: list[VideoEntry],
    output_dirs: dict[str, Path],
    overwrite: bool | Literal["changed"],
    wanted: dict[str, dict[str, Any]],
) -> RunPlan:
    """Per backbone (by name: its folder and the settings `wanted` of its files), skip a video
    only if its .npz exists and records those settings and the video as it is now. Any other
    existing file stops the run (a file made otherwise is never kept silently), unless
    `overwrite` (redo every video) or `overwrite == "changed"` (redo just those files). A video
    done for some backbones is decoded again only for the others."""
    todo: list[VideoEntry] = []
    todo_models: list[tuple[str, ...]] = []
    num_skipped = dict.fromkeys(output_dirs, 0)
    mismatched: list[str] = []
    seen: dict[tuple[str, str], FileIdentity] = {}
    for entry in videos:
        needed = []
        for name, output_dir in output_dirs.items():
            path = output_path_for(output_dir, entry.relative_path)
            identity = file_identity(path)  # before it is read: a later file is another job's
            if identity is not None and overwrite is not True:
                problem = _why_not_reusable(path, entry, wanted[name])
                if problem is None:
                    num_skipped[name] += 1
                    continue
                if problem is not REDO:
                    mismatched.append(problem)
            needed.append(name)
            if identity is not None:
                seen[(name, entry.relative_path)] = identity
        if needed:
            todo.append(entry)
            todo_models.append(tuple(needed))
    if mismatched and overwrite != "changed":
        count = f"{len(mismatched)} existing feature file(s) do not match this run; first: "
        return RunPlan([], [], {}, f"{count}{mismatched[0]}; {CHOICES}")
    return RunPlan(todo, todo_models, num_skipped, None, seen=seen)


def _why_not_reusable(path: Path, entry: VideoEntry, wanted: dict[str, Any]) -> str | None:
    """None if the file is kept; `REDO` if it is redone without asking; else why it does not
    match (the file is read once)."""
    try:
        existing = read_provenance(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        return f"{path} cannot be read ({error})"
    if existing is None:
        return f"{path} records no settings (made by an earlier vfe)"
    difference = first_difference(existing, wanted, entry)
    if difference is not None:
        return f"{path} was made otherwise: {difference}"
    if existing.get("video", {}).get("decode_errors") and not wanted.get("allow_concealed_errors"):
        # Written with errors the decoder concealed (--data.allow_concealed_errors): a strict
        # run decodes it again rather than keep features of frames FFmpeg reported as damaged.
        return REDO
    return None
