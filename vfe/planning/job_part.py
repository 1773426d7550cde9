"""`--part I/N`: independent jobs over one dataset (SLURM array tasks, several machines) each
take a deterministic, balanced share of the videos.

The share is cut from the whole listing, before anything is skipped, so jobs that start at
different times (and see different finished files) still agree: the videos, largest first,
each to the lightest of N parts (by size in bytes, as ranks are planned), and job I takes part
I, in the listing's order. Without `--part`, a SLURM array task takes
I = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of N = SLURM_ARRAY_TASK_COUNT.
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from vfe.errors import VfeError
from vfe.planning.shares import assign_by_size


@dataclass(frozen=True)
class JobPart:
    index: int  # I, from 0
    count: int  # N
    source: str  # "--part" or "SLURM array"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


ALL = "all"  # every video, whatever SLURM's variables say
_PART = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_part(text: str) -> JobPart:
    match = _PART.fullmatch(text)
    if match is None:
        raise VfeError(
            f"--part {text!r} is not I/N (e.g. --part 0/4: the first of 4 jobs) or 'all'"
        )
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise VfeError(f"--part {text!r}: I must be 0 to N-1 and N at least 1 (e.g. 0/4 to 3/4)")
    return JobPart(index, count, "--part")


def job_part(part: str | None, environ: Mapping[str, str] = os.environ) -> JobPart | None:
    """The job's part: `--part I/N`, else a SLURM array task's, else None (all videos);
    `--part all` asks for every video even in a SLURM array task."""
    if part == ALL:
        return None
    if part is not None:
        return parse_part(part)
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT")
    values = [environ.get(name, "") for name in names]
    if not all(value.strip().isdigit() for value in values):
        return None
    task, first, count = (int(value) for value in values)
    if count < 1 or not 0 <= task - first < count:
        raise VfeError(
            f"SLURM array variables {dict(zip(names, values, strict=True))} do not give a part "
            "I/N; pass --part I/N"
        )
    return JobPart(task - first, count, "SLURM array")


def select_part(sizes: list[int], part: JobPart) -> list[int]:
    """The indices (into the listing, in its order) that make up `part`."""
    shares = assign_by_size(sizes, part.count)
    return sorted(shares[part.index])
