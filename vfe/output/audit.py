"""The end of a run, before its summary: every video it planned is written or reported.

Rank 0 checks each planned video and backbone once all ranks have reported: its .npz exists
(written by this run, or by another job sharing the folder), or this run recorded its failure.
A video another live job has claimed (`vfe.planning.claims`) is waited for, as long as that job
lives. Anything else is unfinished — parts that never merged, a write that was lost, a job that
died holding the claim — and is recorded in `failures.jsonl` as a failure of this run, so the
run cannot end with exit 0 while a video it planned is missing. A run over shards into local
folders is checked the same way, shard by shard (`audit_shards`).
"""

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vfe.data.paths import output_path_for
from vfe.data.records import VideoFailure
from vfe.data.work_plan import PlannedRun
from vfe.messages import say
from vfe.output.failures import FAILURES_FILE_NAME, read_failures
from vfe.output.parts import remove_run_parts, unmerged_videos
from vfe.planning.claims import Claims, file_identity, holder_of, release_claims_of
from vfe.planning.owners import run_is_live, unregister
from vfe.planning.shard_plan import done_marker

POLL_SECONDS = 2.0


@dataclass
class Audit:
    unfinished: list[VideoFailure] = field(default_factory=list)  # recorded as failures
    written_elsewhere: dict[str, int] = field(default_factory=dict)  # per backbone


def audit_run(
    plan: PlannedRun,
    output_dirs: dict[str, Path],
    written: dict[str, int],
    record_failure: Callable[[str, VideoFailure], None],
    stop_waiting: Callable[[], None] = lambda: None,
) -> Audit:
    """Check every planned video; record the unfinished ones with `record_failure(backbone,
    failure)`. `written`: per backbone, the files this run wrote; `stop_waiting()` is called
    while waiting for other jobs (it raises on a stop signal)."""
    failed: dict[str, set[str]] = {}
    for name, output_dir in output_dirs.items():
        failed[name] = {
            record.get("relative_path")
            for record in read_failures(output_dir / FAILURES_FILE_NAME).records
            if record.get("run") == plan.run_id and name in record.get("models", [name])
        }

    def missing(indices: Iterable[int]) -> dict[int, list[str]]:
        """Of the videos `indices`, those with backbones neither written nor failed."""
        found: dict[int, list[str]] = {}
        for index in indices:
            entry = plan.videos[index]
            for name in plan.video_models[index]:
                if entry.relative_path in failed[name]:
                    continue
                if not output_path_for(output_dirs[name], entry.relative_path).exists():
                    found.setdefault(index, []).append(name)
        return found

    def held_elsewhere(index: int, names: list[str]) -> str | None:
        for name in names:
            holder = holder_of(output_dirs[name], plan.videos[index].relative_path)
            if holder and holder != plan.run_id and run_is_live(output_dirs[name], holder):
                return holder
        return None

    absent = missing(range(len(plan.videos)))
    waiting = {
        index: holder for index in absent if (holder := held_elsewhere(index, absent[index]))
    }
    if waiting:
        say(
            f"waiting for {len(waiting)} video(s) that another job sharing the folder is "
            f"extracting (run {next(iter(waiting.values()))}); it is checked every "
            f"{POLL_SECONDS:g} s and given up if that job is gone"
        )
    while waiting:
        stop_waiting()
        time.sleep(POLL_SECONDS)
        still = missing(waiting)  # only the videos waited for are looked at again
        for index in waiting:
            if index in still:
                absent[index] = still[index]
            else:
                del absent[index]
        waiting = {
            index: holder for index in still if (holder := held_elsewhere(index, still[index]))
        }
    unmerged = {
        path
        for output_dir in output_dirs.values()
        for path in unmerged_videos(output_dir, plan.run_id)
    }
    audit = Audit()
    for index, names in absent.items():
        entry = plan.videos[index]
        if entry.relative_path in unmerged:
            why = "its parts from several ranks never merged (removed, or a merge failed)"
        else:
            why = "no .npz and no failure recorded (its write was lost, or the job holding it died)"
        failure = VideoFailure(
            index=index,
            path=str(entry.path),
            relative_path=entry.relative_path,
            stage="unfinished",
            error=f"{why}; run the same command again to extract it",
            models=names,
        )
        audit.unfinished.append(failure)
        for name in names:
            record_failure(name, failure)
    for name in output_dirs:
        planned = sum(name in models for models in plan.video_models)
        present = planned - sum(name in names for names in absent.values()) - len(failed[name])
        audit.written_elsewhere[name] = max(0, present - written.get(name, 0))
    return audit


def end_ownership(output_dirs: list[Path], run_id: str) -> None:
    """A run's end, however it ends (after its audit): the claims it holds released (other
    jobs may take those videos), its parts removed, its owner record gone."""
    for output_dir in output_dirs:
        release_claims_of(output_dir, lambda holder: holder == run_id)
        remove_run_parts(output_dir, run_id)
    unregister(output_dirs, run_id)


@dataclass
class ShardAudit:
    """Per backbone, the planned shards left without a done marker (by name), and how many
    another job sharing the folders finished."""

    missing: dict[str, list[str]] = field(default_factory=dict)
    done_elsewhere: dict[str, int] = field(default_factory=dict)


def audit_shards(
    plan: PlannedRun,
    claims: Claims,
    wanted: dict[str, dict[str, Any]],
    output_format: str,
    stop_waiting: Callable[[], None] = lambda: None,
) -> ShardAudit:
    """A run over shards into local folders shared with other jobs: check every planned
    shard and backbone for a done marker made since planning with the `wanted` settings (by
    this run or another). A shard another live job holds is waited for, as long as that job
    lives."""

    def done_by(name: str, shard_name: str) -> str | None:
        """The run that finished the shard for `name` since planning, if one did."""
        marker = done_marker(shard_name)
        path = claims.output_path(name, marker)
        identity = file_identity(path)
        if identity is None or identity == claims.seen.get((name, marker)):
            return None  # none, or the one found at planning (made with other settings)
        try:
            stats = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if stats.get("settings") != wanted[name] or stats.get("format") != output_format:
            return None
        return str(stats.get("run"))

    def held_elsewhere(name: str, shard_name: str) -> bool:
        folder = claims.output_dirs[name]
        holder = holder_of(folder, done_marker(shard_name))
        return bool(holder) and holder != plan.run_id and run_is_live(folder, holder)

    audit = ShardAudit(
        {name: [] for name in claims.output_dirs}, dict.fromkeys(claims.output_dirs, 0)
    )
    pending = [
        (name, plan.shards[number].name) for number, models in plan.shard_todo for name in models
    ]
    said = False
    while True:
        waiting = []
        for name, shard_name in pending:
            run = done_by(name, shard_name)
            if run is not None:
                audit.done_elsewhere[name] += run != plan.run_id
            elif held_elsewhere(name, shard_name):
                waiting.append((name, shard_name))
            else:
                audit.missing[name].append(shard_name)
        if not waiting:
            return audit
        if not said:
            said = True
            say(
                f"waiting for {len(waiting)} shard(s) that another job sharing the folder is "
                f"extracting; checked every {POLL_SECONDS:g} s and given up if that job is gone"
            )
        stop_waiting()
        time.sleep(POLL_SECONDS)
        pending = waiting
