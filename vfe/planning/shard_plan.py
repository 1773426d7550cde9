"""A run over shards (`vfe.sources.shards`): which shards are already done for which backbone,
and which rank and worker reads each one.

A shard is done for a backbone when its output folder holds `<name>.stats.json`
(`vfe.output.shard_sink`), written after the shard's data, recording the run's settings. A
shard done with the same settings is skipped; with other settings the run stops before any
work unless `--overwrite changed` (redo those) or `--overwrite` (redo all). Shards are the unit
of work: shared out over ranks by size, then over each rank's DataLoader workers by size, each
read whole by one worker.

Jobs that share local output folders (started together, or a rerun beside a running job)
claim each shard before reading it (`vfe.planning.claims`), so each shard is read by one of
them; output folders at URLs have no claims: jobs there divide the shards by `--part`.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vfe.decoding.source import storage_errors
from vfe.destinations import is_url, join_location
from vfe.errors import VfeError
from vfe.planning.claims import FileIdentity, file_identity
from vfe.planning.shares import assign_by_size
from vfe.sources.shards import Shard

STATS_SUFFIX = ".stats.json"


def done_marker(shard_name: str) -> str:
    """The name of a shard's done marker in an output folder (also what claims it)."""
    return shard_name + STATS_SUFFIX


def read_stats(folder: str, shard_name: str) -> dict[str, Any] | None:
    """A shard's stats (its done marker) in an output folder (local or URL), or None."""
    import fsspec

    location = join_location(folder, done_marker(shard_name))
    try:
        with fsspec.open(location, "rb") as file:
            return json.loads(file.read())
    except FileNotFoundError:
        return None
    except (ImportError, ValueError) as error:  # no filesystem for the protocol, bad JSON
        raise VfeError(f"{location}: {error}") from error
    except storage_errors() as error:
        raise VfeError(
            f"{location} cannot be read ({type(error).__name__}: {error}); run again once the "
            "storage answers"
        ) from error


def shard_output_dirs(
    output_dir: "str | os.PathLike[str] | None", model_names: list[str]
) -> dict[str, str]:
    """Each backbone's folder, as for feature files (`vfe.data.paths.model_output_dirs`):
    `output_dir` for one backbone (default `features/<name>`), `<output_dir>/<name>` for
    several; local paths or URLs."""
    if output_dir is None:
        return {name: os.path.join("features", name) for name in model_names}
    if len(model_names) == 1:
        return {model_names[0]: str(output_dir)}
    return {name: join_location(str(output_dir), name) for name in model_names}


@dataclass
class ShardListing:
    """Which shards a run does: `todo` as (shard number, backbones), `num_skipped` per
    backbone; `problem`: why the run cannot start (raised on every rank)."""

    todo: list[tuple[int, tuple[str, ...]]]
    num_skipped: dict[str, int] = field(default_factory=dict)
    problem: str = ""
    # The done markers of shards to redo, as found (`vfe.planning.claims.Claims.seen`).
    seen: dict[tuple[str, str], FileIdentity] = field(default_factory=dict)


def plan_shards(
    shards: list[Shard],
    output_dirs: dict[str, str],
    overwrite: bool | Literal["changed"],
    wanted: dict[str, dict[str, Any]],
    output_format: str = "webdataset",
) -> ShardListing:
    """Each shard's backbones still to do, from the stats in each backbone's folder (a shard
    done in another output format counts as made with other settings)."""
    todo: list[tuple[int, tuple[str, ...]]] = []
    skipped = dict.fromkeys(output_dirs, 0)
    for number, shard in enumerate(shards):
        models = []
        for name, folder in output_dirs.items():
            stats = read_stats(folder, shard.name) if overwrite is not True else None
            if stats is None:
                models.append(name)
            elif stats.get("settings") == wanted[name] and stats.get("format") == output_format:
                skipped[name] += 1
            elif overwrite == "changed":
                models.append(name)
            else:
                where = join_location(folder, done_marker(shard.name))
                return ShardListing(
                    [],
                    skipped,
                    f"{where} was made with other settings "
                    f"({_difference(stats, wanted[name], output_format)}); "
                    "--overwrite changed redoes such shards, or choose another --output_dir",
                )
        if models:
            todo.append((number, tuple(models)))
    seen = {}
    for number, models in todo:  # done markers another job may replace meanwhile
        for name in models:
            if not is_url(output_dirs[name]):
                marker = done_marker(shards[number].name)
                identity = file_identity(Path(output_dirs[name]) / marker)
                if identity is not None:
                    seen[(name, marker)] = identity
    return ShardListing(todo, skipped, seen=seen)


def _difference(
    stats: dict[str, Any], wanted: dict[str, Any], output_format: str, max_chars: int = 200
) -> str:
    if stats.get("format") != output_format:
        return f"output format: {stats.get('format')!r} (shard) -> {output_format!r} (now)"
    settings = stats.get("settings") or {}
    for key in sorted(set(settings) | set(wanted)):
        if settings.get(key) != wanted.get(key):
            return f"{key}: {settings.get(key)!r} (shard) -> {wanted.get(key)!r} (now)"[:max_chars]
    return "none recorded"


def share_shards(
    todo: list[tuple[int, tuple[str, ...]]],
    shards: list[Shard],
    num_ranks: int,
    num_workers: int,
) -> list[list[list[tuple[int, tuple[str, ...]]]]]:
    """Per rank, per worker, the shards (number, backbones) it reads: near-equal bytes each."""
    by_rank = assign_by_size([shards[number].size_bytes for number, _ in todo], num_ranks)
    plan = []
    for rank_items in by_rank:
        items = [todo[i] for i in sorted(rank_items)]
        by_worker = assign_by_size([shards[n].size_bytes for n, _ in items], num_workers)
        plan.append([[items[i] for i in sorted(worker)] for worker in by_worker])
    return plan
