"""`failures.jsonl`: one JSON record per failed video, appended by every run and rank.

Records are appended, never rewritten, so runs sharing a folder keep each other's lines. A
process killed mid-write (or a full disk) can leave a cut-off last line: each append then starts
on a new line, and readers count such lines instead of failing on them.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAILURES_FILE_NAME = "failures.jsonl"


@dataclass
class FailureLog:
    """The readable records of a `failures.jsonl` and how many lines could not be read."""

    records: list[dict[str, Any]] = field(default_factory=list)
    num_unreadable: int = 0


def append_failure(failures_file: Path, record: dict[str, Any]) -> None:
    """Append `record` as one line. With O_APPEND one short write never interleaves with
    another process's; a cut-off line left by a killed writer is ended first."""
    failures_file.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    descriptor = os.open(failures_file, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(descriptor).st_size
        if size and os.pread(descriptor, 1, size - 1) != b"\n":
            line = "\n" + line
        os.write(descriptor, line.encode("utf-8"))
    finally:
        os.close(descriptor)


def read_failures(failures_file: Path) -> FailureLog:
    """Every readable record of `failures_file` (none if it does not exist)."""
    log = FailureLog()
    if not failures_file.exists():
        return log
    with open(failures_file, encoding="utf-8", errors="replace") as file:
        for line in file:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.num_unreadable += 1
                continue
            if isinstance(record, dict):
                log.records.append(record)
            else:
                log.num_unreadable += 1
    return log
