"""Who decodes what: the run's videos cut into equal shares, one per DataLoader worker of every
rank, splitting a long video into segments of whole clips.

Sizes in bytes stand in for decoding work (they are known without opening a file). The videos
are laid end to end and cut into `num_ranks x num_workers` equal lengths; a video a cut falls
inside is split there, at the clip boundary nearest the cut's share of its duration, so each
worker of each rank gets the same share whatever the number and length of the videos: one long
video keeps every rank busy. Each segment is decoded from the nearest earlier keyframe
(`vfe.decoding.pyav`), so a split video's features equal the unsplit ones. A video whose
segments went to several ranks is assembled from the ranks' partial results
(`vfe.output.parts`). Where videos cannot be split (a decoder that cannot start mid-video),
whole videos are balanced over ranks by size first (largest first to the lightest rank).
"""

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction

from vfe.data.paths import VideoEntry
from vfe.planning.claims import Claims
from vfe.planning.shares import assign_by_size as assign_ranks
from vfe.sources.shards import Shard


@dataclass(frozen=True)
class WorkItem:
    """Clips `[first_clip, end_clip)` of a video (`end_clip` None: to its end), decoded by one
    worker; `num_segments` says how many items the video was split into."""

    video_index: int
    first_clip: int = 0
    end_clip: int | None = None
    num_segments: int = 1
    size_bytes: int = 0  # this item's share of the file, for progress
    rank_segments: int = 0  # segments of the video on this item's rank (0: all of them)
    num_ranks: int = 1  # ranks holding segments of the video


@dataclass(frozen=True)
class ShardItem:
    """A whole shard (`vfe.sources.shards`), streamed and decoded sample by sample by one
    worker for `models` (those whose output shard is not done)."""

    number: int  # the shard's number in the run's list (`PlannedRun.shards`)
    shard: Shard
    models: tuple[str, ...]

    @property
    def size_bytes(self) -> int:
        return self.shard.size_bytes


# A shard's samples are numbered from `number * SAMPLES_PER_SHARD` where records name videos
# (`VideoStart.index`): no shard holds 2**32 samples.
SAMPLES_PER_SHARD = 1 << 32


def sample_index(shard_number: int, sample_number: int) -> int:
    return shard_number * SAMPLES_PER_SHARD + sample_number


@dataclass
class PlannedRun:
    """What a run does, decided once before any decoding (`VideoDataModule.plan_run`); the
    dataset, the writer and the progress bar are given it."""

    videos: list[VideoEntry]  # to decode, on any rank
    video_models: list[tuple[str, ...]]  # for each, the backbones that still need it
    num_skipped: dict[str, int]  # per backbone, videos already done
    run_id: str  # names this run's failure records and its keys in the process group's store
    videos_per_rank: list[int]  # how many videos each rank decodes (all of them or a part)
    work: list[list[WorkItem | ShardItem]]  # this rank's work, one list per DataLoader worker
    claims: Claims | None = None  # how this run claims videos in folders shared with other jobs
    shards: list[Shard] = field(default_factory=list)  # a run over shards: all of its shards
    # A run over shards: (shard number, backbones) still to do, on any rank.
    shard_todo: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)


def split_over_workers(
    video_indices: list[int],
    sizes: list[int],
    num_workers: int,
    clip_len: Fraction,
    duration_of: Callable[[int], float | None] | None,
    min_segment_seconds: float,
) -> list[list[WorkItem]]:
    """One list of work items per worker, of near-equal total size.

    `duration_of(video_index)` gives a video's duration in seconds (None if unknown) and is
    asked only for videos a cut falls inside; without it (a decoder that cannot start
    mid-video) videos are never split. No segment is shorter than `min_segment_seconds`.
    """
    total = sum(sizes[i] for i in video_indices)
    work: list[list[WorkItem]] = [[] for _ in range(max(1, num_workers))]
    if num_workers <= 1 or total == 0:
        work[0] = [WorkItem(i, size_bytes=sizes[i]) for i in video_indices]
        return work
    share = total / num_workers
    position = 0
    for video_index in video_indices:
        size = sizes[video_index]
        start, end = position, position + size
        position = end
        # Byte offsets (within the video) of the worker shares' edges that fall inside it.
        cuts = [
            worker * share - start
            for worker in range(1, num_workers)
            if start < worker * share < end
        ]
        clip_cuts = []
        if cuts and duration_of is not None:
            clip_cuts = _clip_cuts(
                cuts, size, duration_of(video_index), clip_len, min_segment_seconds
            )
        cut_clips = [clip for clip, _ in clip_cuts]
        byte_edges = [0.0, *(offset for _, offset in clip_cuts), float(size)]
        num_segments = len(cut_clips) + 1
        for segment, (first_clip, end_clip) in enumerate(
            zip([0, *cut_clips], [*cut_clips, None], strict=True)
        ):
            low, high = byte_edges[segment], byte_edges[segment + 1]
            worker = min(num_workers - 1, int((start + (low + high) / 2) // share))
            work[worker].append(
                WorkItem(video_index, first_clip, end_clip, num_segments, round(high - low))
            )
    return work


def _clip_cuts(
    cuts: list[float],
    size: int,
    duration: float | None,
    clip_len: Fraction,
    min_segment_seconds: float,
) -> list[tuple[int, float]]:
    """`(clip index, byte offset)` of each cut that leaves segments of at least
    `min_segment_seconds` on both sides (the cut is moved to the nearest clip boundary)."""
    if not duration or duration <= 0:
        return []
    chosen: list[tuple[int, float]] = []
    previous_seconds = 0.0
    for cut in cuts:
        clip = round(Fraction(cut / size) * Fraction(duration) / clip_len)
        seconds = float(clip * clip_len)
        if seconds - previous_seconds < min_segment_seconds:
            continue
        if duration - seconds < min_segment_seconds:
            break
        chosen.append((clip, size * seconds / duration))
        previous_seconds = seconds
    return chosen


def plan_ranks(
    video_indices: list[int],
    sizes: list[int],
    num_ranks: int,
    num_workers: int,
    clip_len: Fraction,
    duration_of: Callable[[int], float | None] | None,
    min_segment_seconds: float,
) -> list[list[list[WorkItem]]]:
    """Per rank, one list of work items per worker (`num_workers` >= 1), every item knowing how
    many of its video's segments its rank holds and on how many ranks the video is."""
    if duration_of is None:  # whole videos: by size over ranks, then over each rank's workers
        shares = assign_ranks([sizes[i] for i in video_indices], num_ranks)
        per_rank = [
            split_over_workers(
                [video_indices[i] for i in share], sizes, num_workers, clip_len, None, 0.0
            )
            for share in shares
        ]
    else:
        everyone = split_over_workers(
            video_indices,
            sizes,
            num_ranks * num_workers,
            clip_len,
            duration_of,
            min_segment_seconds,
        )
        per_rank = [
            everyone[rank * num_workers : (rank + 1) * num_workers] for rank in range(num_ranks)
        ]
    on_rank: dict[tuple[int, int], int] = {}  # (video, rank) -> segments
    for rank, workers in enumerate(per_rank):
        for items in workers:
            for item in items:
                key = (item.video_index, rank)
                on_rank[key] = on_rank.get(key, 0) + 1
    ranks_of: dict[int, int] = {}
    for video, _ in on_rank:
        ranks_of[video] = ranks_of.get(video, 0) + 1
    return [
        [
            [
                replace(
                    item,
                    rank_segments=on_rank[(item.video_index, rank)],
                    num_ranks=ranks_of[item.video_index],
                )
                for item in items
            ]
            for items in workers
        ]
        for rank, workers in enumerate(per_rank)
    ]


def work_shares(work: list[list[WorkItem | ShardItem]]) -> list[int]:
    """Bytes of work per worker (for tests and progress)."""
    return [sum(item.size_bytes for item in items) for items in work]
