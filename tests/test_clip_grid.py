"""The clip grid in seconds (contract: Clips), table-driven on frame times."""

from fractions import Fraction

import numpy as np
import pytest

from vfe.data.clip_grid import (
    ClipAssigner,
    clip_length_fraction,
    clip_windows,
    uniform_indices,
)
from vfe.errors import VfeError


def constant_rate(num_frames: int, fps: Fraction) -> list[Fraction]:
    return [k / fps for k in range(num_frames)]


def first_frames(clips: list[list[int]]) -> list[int]:
    return [frames[0] for frames in clips]


def clip_frame_indices(times_seconds: list[Fraction], clip_len: Fraction) -> list[list[int]]:
    """Frame indices of each clip for frames at `times_seconds` (first 0, increasing), through
    `ClipAssigner`, the one route the dataset takes through the grid rule."""
    assigner = ClipAssigner(clip_len)
    clips: list[list[int]] = []
    for frame_index, time_seconds in enumerate(times_seconds):
        clip_index, held = assigner.add(time_seconds)
        clips.extend([frame_index - 1] for _ in held)
        if clip_index == len(clips):
            clips.append([])
        clips[clip_index].append(frame_index)
    return clips


@pytest.mark.parametrize(
    ("times", "clip_len", "expected"),
    [
        # 85 frames at 25 fps, 2 s clips: 50 frames, then a short last clip of 35.
        (constant_rate(85, Fraction(25)), 2.0, [list(range(50)), list(range(50, 85))]),
        (constant_rate(1, Fraction(25)), 2.0, [[0]]),  # one frame -> one clip
        (constant_rate(12, Fraction(25)), 2.0, [list(range(12))]),  # shorter than a clip
        # 30 fps, 0.1 s clips: frame 3 is at exactly 0.1 s and opens clip 1.
        (constant_rate(7, Fraction(30)), 0.1, [[0, 1, 2], [3, 4, 5], [6]]),
        # A VFR gap longer than a clip: clip 1 has no frame start and holds frame 2.
        ([Fraction(t) for t in ("0", "0.5", "1", "5.2", "5.3")], 2.0, [[0, 1, 2], [2], [3, 4]]),
        # A gap of several clips right after the first frame.
        ([Fraction(0), Fraction(7)], 2.0, [[0], [0], [0], [1]]),
        # Clips shorter than the frame spacing: each empty window holds the frame on screen.
        (constant_rate(3, Fraction(10)), 0.04, [[0], [0], [1], [1], [1], [2]]),
    ],
)
def test_clip_frame_indices(times, clip_len, expected):
    assert clip_frame_indices(times, clip_length_fraction(clip_len)) == expected


def test_29_97_fps_for_an_hour_stays_on_the_seconds_grid():
    fps = Fraction(30000, 1001)
    clips = clip_frame_indices(constant_rate(107_892, fps), Fraction(2))  # 3,600 s
    assert len(clips) == 1800
    starts = np.array(first_frames(clips))
    # Clip i opens with the first frame at or after 2i seconds: ceil(2i * fps).
    expected = np.array([-(-2 * i * fps // 1) for i in range(1800)])
    np.testing.assert_array_equal(starts, expected)
    assert float(starts[-1] / fps) == pytest.approx(3598, abs=1 / 29.97)  # not 3.6 s late
    assert {len(c) for c in clips[:-1]} == {59, 60}


def test_12_5_fps_with_1_second_clips_alternates_13_and_12_frames():
    clips = clip_frame_indices(constant_rate(125, Fraction(25, 2)), Fraction(1))
    assert [len(c) for c in clips] == [13, 12] * 5
    assert all(k * 2 / 25 >= i for i, c in enumerate(clips) for k in c[:1])


def test_assigner_reports_held_clips_and_rejects_bad_times():
    assigner = ClipAssigner(Fraction(1))
    assert assigner.add(Fraction(0)) == (0, range(0))
    assert assigner.add(Fraction(3, 2)) == (1, range(1, 1))
    assert assigner.add(Fraction(9, 2)) == (4, range(2, 4))
    assert assigner.num_clips == 5
    with pytest.raises(ValueError, match="must increase"):
        assigner.add(Fraction(4))
    with pytest.raises(ValueError, match="at time 0"):
        ClipAssigner(Fraction(1)).add(Fraction(1, 2))


def test_assigner_of_a_segment_starts_at_its_first_clip():
    segment = ClipAssigner(Fraction(2), first_clip=3)
    assert segment.add(Fraction(61, 10)) == (3, range(3, 3))  # nothing before clip 3 is held
    assert segment.add(Fraction(11)) == (5, range(4, 5))  # an empty window inside is
    with pytest.raises(ValueError, match="comes before clip 3"):
        ClipAssigner(Fraction(2), first_clip=3).add(Fraction(59, 10))


@pytest.mark.parametrize(
    ("num_clips", "clip_len", "duration", "expected"),
    [
        (2, 2.0, Fraction(17, 5), [[0, 2], [2, 3.4]]),
        (1, 2.0, Fraction(1, 25), [[0, 0.04]]),  # one frame
        (3, 2.0, Fraction(5833, 1000), [[0, 2], [2, 4], [4, 5.833]]),
        (2, 0.1, Fraction(1, 5), [[0, 0.1], [0.1, 0.2]]),
    ],
)
def test_clip_windows(num_clips, clip_len, duration, expected):
    windows = clip_windows(num_clips, clip_length_fraction(clip_len), duration)
    assert windows.dtype == np.float64 and windows.shape == (num_clips, 2)
    np.testing.assert_array_equal(windows, np.array(expected, dtype=np.float64))


@pytest.mark.parametrize("clip_len", [0, -1, float("nan"), float("inf")])
def test_bad_clip_len_is_a_clear_error(clip_len):
    with pytest.raises(VfeError, match="clip_len must be a positive number"):
        clip_length_fraction(clip_len)


def test_clip_len_is_the_decimal_the_user_typed():
    assert clip_length_fraction(0.1) == Fraction(1, 10)
    assert clip_length_fraction(2) == Fraction(2)


@pytest.mark.parametrize(
    ("num_items", "num_samples", "expected"),
    [
        (32, 8, [0, 4, 8, 13, 17, 22, 26, 31]),  # PackPathway's slow indices, alpha 4
        (50, 4, [0, 16, 32, 49]),
        (4, 8, [0, 0, 0, 1, 1, 2, 2, 3]),  # fewer frames than samples repeat
        (1, 3, [0, 0, 0]),
        (5, 1, [0]),
    ],
)
def test_uniform_indices(num_items, num_samples, expected):
    assert uniform_indices(num_items, num_samples) == expected
