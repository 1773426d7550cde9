"""Work shares: whole videos over ranks, then equal shares per worker with long videos split."""

import itertools
from fractions import Fraction

import pytest

from vfe.data.work_plan import (
    WorkItem,
    assign_ranks,
    plan_ranks,
    split_over_workers,
    work_shares,
)

TWO_SECONDS = Fraction(2)


def plan(sizes, num_ranks, num_workers, durations, min_segment_seconds=30.0):
    """Per rank, per worker work items."""
    return [
        split_over_workers(
            videos, sizes, num_workers, TWO_SECONDS, durations.__getitem__, min_segment_seconds
        )
        for videos in assign_ranks(sizes, num_ranks)
    ]


def covered_clips(work: list[list[list[WorkItem]]], num_clips: dict[int, int]) -> dict[int, list]:
    """video -> sorted clip ranges of its items; each video's ranges must tile [0, clips)."""
    ranges: dict[int, list] = {}
    for rank in work:
        for items in rank:
            for item in items:
                end = num_clips[item.video_index] if item.end_clip is None else item.end_clip
                ranges.setdefault(item.video_index, []).append((item.first_clip, end))
    return {video: sorted(spans) for video, spans in ranges.items()}


def test_20_videos_on_8_ranks_of_4_workers_keep_every_worker_busy():
    sizes, durations = [100] * 20, [300.0] * 20  # 5-minute videos of equal size
    work = plan(sizes, 8, 4, durations)
    per_rank = [sum(work_shares(rank)) for rank in work]
    assert per_rank == [300] * 4 + [200] * 4  # 3 or 2 whole videos per rank (was 4,4,4,4,4,0,0,0)
    per_worker = [work_shares(rank) for rank in work]
    assert per_worker == [[75] * 4] * 4 + [[50] * 4] * 4  # each rank's share split evenly
    for video, spans in covered_clips(work, dict.fromkeys(range(20), 150)).items():
        assert spans[0][0] == 0 and spans[-1][1] == 150, video
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), video
    ranks_of_video = {
        item.video_index: rank
        for rank, workers in enumerate(work)
        for items in workers
        for item in items
    }
    assert len(ranks_of_video) == 20  # segments of a video never leave its rank


def test_3_videos_on_8_ranks_go_to_3_ranks_not_1():
    work = plan([100] * 3, 8, 2, [300.0] * 3)
    assert [sum(work_shares(rank)) for rank in work] == [100, 100, 100, 0, 0, 0, 0, 0]
    assert [work_shares(rank) for rank in work[:3]] == [[50, 50]] * 3  # split over 2 workers


def test_one_long_video_is_split_over_the_workers_at_clip_boundaries():
    (work,) = plan([1000], 1, 4, [3600.0])
    assert work_shares(work) == [250] * 4
    items = [item for items in work for item in items]
    assert [(i.first_clip, i.end_clip) for i in items] == [
        (0, 450),
        (450, 900),
        (900, 1350),
        (1350, None),
    ]
    assert {i.num_segments for i in items} == {4}


@pytest.mark.parametrize(
    ("durations", "min_segment_seconds"),
    [([40.0, 40.0, 40.0], 30.0), ([None, None, None], 30.0), ([3600.0] * 3, 10_000.0)],
    ids=["too short to split", "duration unknown", "minimum longer than videos"],
)
def test_videos_are_not_split_below_the_minimum_segment(durations, min_segment_seconds):
    (work,) = plan([100] * 3, 1, 2, durations, min_segment_seconds)
    items = [item for items in work for item in items]
    assert all((i.first_clip, i.end_clip, i.num_segments) == (0, None, 1) for i in items)
    assert sorted(i.video_index for i in items) == [0, 1, 2]
    assert all(work)  # both workers still get a video


def test_no_decoder_seeking_means_whole_videos_only():
    work = split_over_workers([0, 1], [100, 1], 4, TWO_SECONDS, None, 30.0)
    assert sorted(item.video_index for items in work for item in items) == [0, 1]
    assert all(item.num_segments == 1 for items in work for item in items)


def test_many_small_videos_are_shared_evenly_without_splits():
    sizes = [3, 1, 4, 1, 5, 9, 2, 6] * 250  # 2,000 small videos
    work = split_over_workers(list(range(len(sizes))), sizes, 4, TWO_SECONDS, lambda i: 5.0, 30.0)
    shares = work_shares(work)
    assert max(shares) - min(shares) <= max(sizes)
    assert sorted(item.video_index for items in work for item in items) == list(range(2000))


def test_one_long_video_on_two_ranks_is_split_between_them():
    work = plan_ranks([0], [1000], 2, 1, TWO_SECONDS, lambda i: 600.0, 30.0)
    (first,), (second,) = (workers[0] for workers in work)
    assert (first.first_clip, first.end_clip, second.first_clip, second.end_clip) == (
        0,
        150,
        150,
        None,
    )
    for item in (first, second):
        assert (item.num_segments, item.rank_segments, item.num_ranks) == (2, 1, 2)


def test_ranks_and_workers_share_the_run_evenly():
    sizes = [100] * 20  # 20 five-minute videos on 8 ranks x 4 workers: 62.5 bytes each
    work = plan_ranks(list(range(20)), sizes, 8, 4, TWO_SECONDS, lambda i: 300.0, 30.0)
    shares = [share for workers in work for share in work_shares(workers)]
    assert max(shares) - min(shares) <= 1
    for video, spans in covered_clips(work, dict.fromkeys(range(20), 150)).items():
        assert spans[0][0] == 0 and spans[-1][1] == 150, video
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), video
    for workers in work:  # each item knows its video's segments on its rank and its ranks
        for items in workers:
            for item in items:
                on_rank = [i for its in workers for i in its if i.video_index == item.video_index]
                ranks = sum(
                    any(i.video_index == item.video_index for its in w for i in its) for w in work
                )
                assert (item.rank_segments, item.num_ranks) == (len(on_rank), ranks)


def test_videos_that_cannot_be_split_are_balanced_whole_over_ranks():
    work = plan_ranks(list(range(4)), [400, 100, 100, 100], 2, 2, TWO_SECONDS, None, 30.0)
    assert [sum(work_shares(workers)) for workers in work] == [400, 300]
    assert all(i.num_ranks == 1 and i.num_segments == 1 for w in work for its in w for i in its)


def test_thousands_of_tiny_videos_and_ranks_with_nothing():
    sizes = [3, 1, 4, 1, 5, 9, 2, 6] * 500  # 4,000 tiny videos (5 s: never split)
    work = plan_ranks(list(range(4000)), sizes, 4, 2, TWO_SECONDS, lambda i: 5.0, 30.0)
    shares = [share for workers in work for share in work_shares(workers)]
    assert max(shares) - min(shares) <= max(sizes)
    videos = sorted(item.video_index for w in work for its in w for item in its)
    assert videos == list(range(4000))  # each exactly once, whole
    assert all(i.num_ranks == 1 for w in work for its in w for i in its)
    one_video = plan_ranks([0], [100], 4, 1, TWO_SECONDS, lambda i: 5.0, 30.0)
    assert sorted(len(items) for (items,) in one_video) == [0, 0, 0, 1]  # 3 ranks with nothing
