"""Jobs that share an output folder share its videos: a video is decoded by the run that
claims it first, claimed just before decoding, so jobs started together divide the work as
they go and none writes a video another is writing.

A claim is `<output_dir>/.vfe-claims/<output name>.claim`, holding the claiming run's id. It
is made by `os.link` of a complete file onto that name, which fails if the name exists (atomic
on local file systems and NFS alike). A claim held by a live run (`vfe.planning.owners`) is
respected; one held by a gone run is taken over. After claiming, a video whose output is not
the file this run saw when it listed the folder (another job wrote it meanwhile) is left
alone. Files are compared by identity (inode, size, modification and change times), not by a
clock: the kernel stamps files from a coarse clock that can lag `time.time_ns()` by a tick, so
a file written just after the listing could look older than it. The writer releases a
video's claim once its .npz is written or its failure recorded; a run's remaining claims go at
its end.

A run over shards (`vfe.planning.shard_plan`) into local folders claims whole shards the same
way, by the name of the shard's done marker (`<shard>.stats.json`, claimed as
`<shard>.stats.claim`): its output is that marker.
"""

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vfe.destinations import TEMPORARY_SUFFIX, temporary_name_prefix
from vfe.planning.owners import run_is_live

CLAIMS_DIR_NAME = ".vfe-claims"  # one of `vfe.destinations.RESERVED_NAMES`


def claim_file(output_dir: Path, relative_path: str) -> Path:
    return (Path(output_dir) / CLAIMS_DIR_NAME / relative_path).with_suffix(".claim")


def holder_of(output_dir: Path, relative_path: str) -> str | None:
    """The run id holding the video's claim in `output_dir`, if any."""
    try:
        return claim_file(output_dir, relative_path).read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


FileIdentity = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


def file_identity(path: Path) -> FileIdentity | None:
    """What tells one version of a file from another (None: no such file)."""
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@dataclass(frozen=True)
class Claims:
    """A run's claims on videos, per backbone output folder (picklable: the decoding workers
    claim)."""

    output_dirs: dict[str, Path]  # backbone -> its output folder
    run_id: str
    # The outputs that existed when the run listed the folder, by (backbone, video): any
    # other output found at claim time was written by another job meanwhile.
    seen: dict[tuple[str, str], FileIdentity] = field(default_factory=dict)
    # A claim names the output file itself (a shard's done marker), not a video whose output
    # is its `.npz`.
    names_output: bool = False

    def output_path(self, name: str, relative_path: str) -> Path:
        """The file whose presence means the claimed work is done for backbone `name`."""
        path = self.output_dirs[name] / relative_path
        return path if self.names_output else path.with_suffix(".npz")

    def claim(self, relative_path: str, models: tuple[str, ...]) -> tuple[str, ...]:
        """The backbones of `models` this run may decode the video for now: all of them, or
        none if another live run holds any of them, or if all are written meanwhile."""
        taken: list[str] = []
        for name in models:
            holder = self._claim_one(self.output_dirs[name], relative_path)
            if holder != self.run_id:  # another live run decodes it: leave the video to it
                for own in taken:
                    self.release(relative_path, (own,))
                return ()
            taken.append(name)
        left = tuple(name for name in models if not self._written_meanwhile(name, relative_path))
        self.release(relative_path, [name for name in models if name not in left])
        return left

    def _written_meanwhile(self, name: str, relative_path: str) -> bool:
        now = file_identity(self.output_path(name, relative_path))
        return now is not None and now != self.seen.get((name, relative_path))

    def _claim_one(self, output_dir: Path, relative_path: str) -> str:
        """This run's id if it now holds the claim, else the live holder's."""
        target = claim_file(output_dir, relative_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Complete before it is linked under the claim's name (no fsync: a claim that a crash
        # loses belongs to a gone run anyway); named as vfe's temporaries are, so that one a
        # killed run leaves is removed with theirs.
        descriptor, name = tempfile.mkstemp(
            prefix=temporary_name_prefix(target), suffix=TEMPORARY_SUFFIX, dir=target.parent
        )
        with os.fdopen(descriptor, "w") as file:
            file.write(self.run_id)
        ours = Path(name)
        try:
            for _ in range(3):  # a stale claim moved away, then ours; another may race us
                try:
                    os.link(ours, target)
                    return self.run_id
                except FileExistsError:
                    pass
                holder = holder_of(output_dir, relative_path)
                if holder is None:
                    continue  # released meanwhile
                if holder == self.run_id or run_is_live(output_dir, holder):
                    return holder
                # The holder is gone: move its claim away (one racer succeeds), then retry.
                stale = ours.with_name(f"{temporary_name_prefix(target)}stale{TEMPORARY_SUFFIX}")
                with contextlib.suppress(FileNotFoundError):
                    os.rename(target, stale)
                    os.unlink(stale)
            return holder_of(output_dir, relative_path) or ""
        finally:
            ours.unlink(missing_ok=True)

    def release(self, relative_path: str, models: tuple[str, ...] | list[str]) -> None:
        """Drop this run's claims on the video (written, or its failure recorded)."""
        for name in models:
            if holder_of(self.output_dirs[name], relative_path) == self.run_id:
                claim_file(self.output_dirs[name], relative_path).unlink(missing_ok=True)


def release_claims_of(output_dir: Path, is_released) -> None:
    """Remove the claims in `output_dir` whose holder `is_released(holder)` says, and the
    claim folders left empty."""
    root = Path(output_dir) / CLAIMS_DIR_NAME
    if not root.is_dir():
        return
    for path in root.rglob("*.claim"):
        with contextlib.suppress(OSError):
            if is_released(path.read_text().strip()):
                path.unlink()
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()
