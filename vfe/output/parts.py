"""A video decoded on several ranks: each rank leaves its part (per-clip feature sums and
counts, and its segments' end records) in the output folder; the rank whose part completes the
set merges them into the video's .npz, once, and removes the parts.

Parts live in `<output_dir>/.vfe-parts/<run id>/<relative path>/rank<N>.npz`, each written
complete or not at all. A rank writes its part and then counts the parts: whichever rank
writes last sees them all (both may, if they write at once), and only the one that creates
the folder's `merging` file (`O_CREAT | O_EXCL`) merges. A rank on which a segment failed
leaves a part that says so: the merge then records the failure instead of writing features.
Parts of runs that are gone (`vfe.planning.owners`: ended, killed on this host, or silent for
`STALE_SECONDS` elsewhere) are removed when a run starts (`remove_stale_parts`); a live run's
parts are never touched, whichever run shares the folder.
"""

import contextlib
import dataclasses
import json
import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vfe.data.records import SegmentEnd, VideoFailure, VideoStart, VideoTail
from vfe.output.assembly import FinishedVideo, PartialVideo, finish_video
from vfe.output.npz import save_npz_atomically
from vfe.planning.owners import run_is_live

PARTS_DIR_NAME = ".vfe-parts"  # one of `vfe.destinations.RESERVED_NAMES`
MERGING_FILE_NAME = "merging"


def part_folder(output_dir: Path, run_id: str, relative_path: str) -> Path:
    return Path(output_dir) / PARTS_DIR_NAME / run_id / relative_path


def _encode(value: Any) -> Any:
    """Records as JSON (Fractions as "n/d" strings)."""
    if isinstance(value, Fraction):
        return f"{value.numerator}/{value.denominator}"
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_encode(item) for item in value]
    return value


def _end_of(record: dict[str, Any]) -> SegmentEnd:
    last = record.pop("last")
    if last is not None:
        last = VideoTail(last["num_clips"], Fraction(last["duration_seconds"]))
    return SegmentEnd(**record, last=last)


def write_part(folder: Path, rank: int, part: PartialVideo | VideoFailure) -> None:
    """This rank's part of the video: its sums, counts and end records, or its failure."""
    if isinstance(part, VideoFailure):
        arrays = {"failure": np.array(json.dumps(dataclasses.asdict(part)))}
    else:
        arrays = {
            "feature_sums": part.feature_sums,
            "sample_counts": part.sample_counts,
            "ends": np.array(json.dumps([_encode(dataclasses.asdict(e)) for e in part.ends])),
            "info": np.array(json.dumps(dataclasses.asdict(part.info))),
        }
    save_npz_atomically(folder / f"rank{rank}.npz", arrays)


def claim_parts(folder: Path, num_ranks: int) -> list[Path] | None:
    """All `num_ranks` parts, if they are all written and this process is the one to merge
    them; else None."""
    parts = sorted(folder.glob("rank*.npz"))
    if len(parts) < num_ranks:
        return None
    try:
        os.close(os.open(folder / MERGING_FILE_NAME, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:  # another rank merges
        return None
    return parts


def merge_parts(parts: list[Path]) -> FinishedVideo | VideoFailure:
    """The video from its ranks' parts, or the first failure one of them records."""
    sums, counts, ends, info = [], [], [], None
    for path in parts:
        with np.load(path) as part:
            if "failure" in part.files:
                return VideoFailure(**json.loads(str(part["failure"])))
            sums.append(part["feature_sums"])
            counts.append(part["sample_counts"])
            ends += [_end_of(record) for record in json.loads(str(part["ends"]))]
            info = VideoStart(**json.loads(str(part["info"])))
    num_clips = max(len(c) for c in counts)
    dim = max(s.shape[1] for s in sums if s.size) if any(s.size for s in sums) else 0
    feature_sums = np.zeros((num_clips, dim), dtype=np.float64)
    sample_counts = np.zeros(num_clips, dtype=np.int64)
    for part_sums, part_counts in zip(sums, counts, strict=True):
        if part_sums.size:  # a rank whose segments found no frames has no sums
            feature_sums[: len(part_sums)] += part_sums
        sample_counts[: len(part_counts)] += part_counts
    return finish_video(info, feature_sums, sample_counts, sorted(ends, key=lambda e: e.first_clip))


def remove_parts(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def remove_run_parts(output_dir: Path, run_id: str) -> None:
    """At the end of a run whose ranks all finished: its parts folder (empty unless a merge
    failed), and the parts root if no other run uses it."""
    root = Path(output_dir) / PARTS_DIR_NAME
    shutil.rmtree(root / run_id, ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty, or absent
        root.rmdir()


def remove_stale_parts(output_dir: Path) -> None:
    """Parts left by runs that are gone, killed before merging (a new run redoes those
    videos); the parts of runs still working are kept."""
    root = Path(output_dir) / PARTS_DIR_NAME
    if not root.is_dir():
        return
    for run_folder in root.iterdir():
        if run_folder.is_dir() and not run_is_live(output_dir, run_folder.name):
            shutil.rmtree(run_folder, ignore_errors=True)
    with contextlib.suppress(OSError):  # other runs' parts are there
        root.rmdir()


def unmerged_videos(output_dir: Path, run_id: str) -> list[str]:
    """Relative paths (as folders of parts) of the run's videos whose parts never merged."""
    root = Path(output_dir) / PARTS_DIR_NAME / run_id
    if not root.is_dir():
        return []
    return sorted(
        folder.relative_to(root).as_posix()
        for folder in root.rglob("*")
        if folder.is_dir() and any(folder.glob("rank*.npz"))
    )
