import pytest

from vfe.clip_grid import clip_frame_ranges, frames_per_clip, uniform_frame_indices, uniform_indices
from vfe.errors import VfeError


@pytest.mark.parametrize(
    ("num_frames", "fps", "clip_len", "expected"),
    [
        (85, 25.0, 2.0, [(0, 50), (50, 85)]),  # short last clip is kept
        (100, 25.0, 2.0, [(0, 50), (50, 100)]),  # whole number of clips
        (1, 25.0, 2.0, [(0, 1)]),  # one frame -> one clip
        (12, 25.0, 2.0, [(0, 12)]),  # shorter than one clip
        (0, 25.0, 2.0, []),
        (10, 29.97, 0.1, [(0, 3), (3, 6), (6, 9), (9, 10)]),  # round(2.997) = 3
        (9, 30.0, 1.5, [(0, 9)]),  # 45 frames per clip
        (7, 10.0, 0.01, [(i, i + 1) for i in range(7)]),  # at least one frame per clip
        (120, 59.94, 1.0, [(0, 60), (60, 120)]),
    ],
)
def test_clip_frame_ranges(num_frames, fps, clip_len, expected):
    assert clip_frame_ranges(num_frames, fps, clip_len) == expected


@pytest.mark.parametrize(("clip_len", "fps"), [(0, 25), (-1, 25), (float("nan"), 25), (2, 0)])
def test_bad_clip_len_or_fps_is_a_clear_error(clip_len, fps):
    with pytest.raises(VfeError):
        frames_per_clip(clip_len, fps)


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


def test_uniform_frame_indices_stay_inside_the_clip():
    indices = uniform_frame_indices(50, 85, 32)
    assert len(indices) == 32
    assert indices[0] == 50 and indices[-1] == 84
    assert indices == sorted(indices)
