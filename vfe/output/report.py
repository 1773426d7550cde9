"""The end of a run, as rank 0 reports it for all ranks: one summary line per backbone, the
failed videos with their reasons, what was written with concealed errors, and what NVDEC left
to the software decoder."""

from pathlib import Path

from vfe.messages import say, say_more, seconds_since_command_start
from vfe.output.audit import Audit, ShardAudit
from vfe.output.failures import FAILURES_FILE_NAME, read_failures

MAX_FAILURES_SHOWN = 20


def report_run(
    totals: dict[str, int],
    output_dirs: dict[str, Path],
    skipped: dict[str, int],
    run_id: str,
    seconds: float,
    audit: Audit,
) -> int:
    """Print the run's summary from the totals over all ranks and the end-of-run `audit`; the
    number of videos not written (failed, left incomplete, or found unfinished)."""
    names = list(output_dirs)
    unfinished = max(totals[f"{name}/unfinished"] for name in names)
    failed = totals["failed"] + len(audit.unfinished)
    # The extraction's time; the command's own when it took longer (loading, planning).
    since_start = seconds_since_command_start()
    wall = f"wall time {seconds:.1f} s"
    if since_start is not None and since_start - seconds >= 0.1:
        wall = f"extraction {seconds:.1f} s, wall time {since_start:.1f} s with start-up"
    for name in names:
        label = f"{name}: " if len(names) > 1 else ""
        say(
            f"{label}written {totals[f'{name}/written']}, skipped {skipped.get(name, 0)}, "
            f"failed {failed}, clips {totals[f'{name}/clips']}, {wall} -> {output_dirs[name]}"
        )
    if failed:
        # Every rank appended its failures before reporting its totals; each failed video
        # is listed once, with the backbones it was for.
        files = " and ".join(str(output_dirs[n] / FAILURES_FILE_NAME) for n in names)
        say(f"{failed} video(s) failed; reasons in {files}")
        records = {
            r["relative_path"]: r
            for name in names
            for r in read_failures(output_dirs[name] / FAILURES_FILE_NAME).records
            if r.get("run") == run_id
        }
        lines = []
        for record in list(records.values())[:MAX_FAILURES_SHOWN]:
            models = f" ({', '.join(record['models'])})" if len(names) > 1 else ""
            lines.append(
                f"  {record['relative_path']}{models}: {record['stage']}: {record['error']}"
            )
        if failed > MAX_FAILURES_SHOWN:
            lines.append(f"  ... and {failed - MAX_FAILURES_SHOWN} more")
        if lines:
            say_more(lines)
    if unfinished:
        say(f"{unfinished} video(s) ended incomplete and were not written")
    _say_done_elsewhere(names, audit.written_elsewhere, "video(s)", "written")
    if totals.get("not_nvdec"):
        say(
            f"{totals['not_nvdec']} video(s) decoded by FFmpeg in software: NVDEC cannot decode "
            "their streams (nvdec_frames: 0 in their provenance)"
        )
    if totals["concealed"]:
        say(
            f"{totals['concealed']} video(s) written although the decoder concealed errors "
            "in them (--data.allow_concealed_errors; the count is in each file's provenance)"
        )
    return failed  # the audit recorded what ended incomplete as failed


def report_shard_run(
    totals: dict[str, int],
    output_dirs: dict[str, str],
    skipped_shards: dict[str, int],
    seconds: float,
    audit: ShardAudit | None = None,
) -> int:
    """Print the summary of a run over shards (`vfe.output.shard_sink`); the number of samples
    not written plus shards not finished (by the `audit` of local folders, where other jobs
    may have finished some; else as this run's ranks counted)."""
    names = list(output_dirs)
    failed = totals["failed"]
    unfinished = max(totals[f"{name}/unfinished"] for name in names)
    wall = f"wall time {seconds:.1f} s"
    for name in names:
        label = f"{name}: " if len(names) > 1 else ""
        say(
            f"{label}shards done {totals[f'{name}/shards']}, skipped "
            f"{skipped_shards.get(name, 0)}; written {totals[f'{name}/written']}, failed "
            f"{failed}, clips {totals[f'{name}/clips']}, {wall} -> {output_dirs[name]}"
        )
    if failed:
        say(f"{failed} sample(s) failed; reasons in each shard's .stats.json")
    not_done = totals["unreadable_shards"] + totals["open_shards"]
    if audit is not None:
        not_done = len({shard for missing in audit.missing.values() for shard in missing})
        _say_done_elsewhere(names, audit.done_elsewhere, "shard(s)", "done")
    if not_done:
        say(f"{not_done} shard(s) not finished (no .stats.json): the same command redoes them")
    return failed + unfinished + not_done


def _say_done_elsewhere(names: list[str], counts: dict[str, int], unit: str, verb: str) -> None:
    """Per backbone, how much of the run's plan another job sharing the folder did."""
    for name in names:
        if counts.get(name):
            label = f"{name}: " if len(names) > 1 else ""
            say(
                f"{label}{counts[name]} {unit} of this run's plan were {verb} by another job "
                "sharing the folder"
            )
