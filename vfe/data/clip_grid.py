"""Clip grid math: which frames form each clip, and which frames a backbone samples from a clip.

Clips are windows of presentation time (the contract's Clips section). With L = clip_len and
t_k the exact time of frame k from the first frame, clip i holds the frames with
i*L <= t_k < (i+1)*L. A window in which no frame starts (a gap in a variable-frame-rate file)
holds the frame on screen at its start, i.e. the last frame before it. Clips run from 0 to
floor(t_last / L). All times are `Fraction`s, so no clip boundary depends on float rounding.
"""

import math
from fractions import Fraction

import numpy as np
import torch

from vfe.errors import VfeError

# Bumped whenever the rule above changes, so files made under another rule can be told apart.
GRID_VERSION = 2


def clip_length_fraction(clip_len_seconds: float) -> Fraction:
    """`clip_len` as the exact decimal the user typed: 0.1 -> 1/10, not the nearest double."""
    if not (math.isfinite(clip_len_seconds) and clip_len_seconds > 0):
        raise VfeError(f"clip_len must be a positive number of seconds, got {clip_len_seconds!r}")
    return Fraction(repr(float(clip_len_seconds)))


class ClipAssigner:
    """Assigns frames, fed one by one in presentation order, to clips.

    `add(t)` returns `(clip_index, held_clips)`: the clip the frame starts in, and the empty
    windows before it (between the previous frame's clip and this one), which hold the previous
    frame. After the last frame, `num_clips` is floor(t_last / L) + 1.
    """

    def __init__(self, clip_len: Fraction, first_clip: int = 0) -> None:
        """`first_clip` > 0: frames fed start at that clip (a segment of the video), the first
        at or after its start; clips before it are not counted as held."""
        self.clip_len = clip_len
        self.num_clips = first_clip
        self._last_time: Fraction | None = None

    def add(self, time_seconds: Fraction) -> tuple[int, range]:
        if self._last_time is not None and time_seconds <= self._last_time:
            raise ValueError(
                f"frame times must increase: {float(time_seconds)} s after "
                f"{float(self._last_time)} s"
            )
        if self._last_time is None and self.num_clips == 0 and time_seconds != 0:
            raise ValueError(f"the first frame must be at time 0, not {float(time_seconds)} s")
        if self._last_time is None and time_seconds < self.num_clips * self.clip_len:
            raise ValueError(
                f"a frame at {float(time_seconds)} s comes before clip {self.num_clips}"
            )
        self._last_time = time_seconds
        clip_index = math.floor(time_seconds / self.clip_len)
        held = range(self.num_clips, clip_index)
        self.num_clips = clip_index + 1
        return clip_index, held


def clip_windows(num_clips: int, clip_len: Fraction, duration_seconds: Fraction) -> np.ndarray:
    """`(num_clips, 2) float64`: `[i*L, min((i+1)*L, duration)]` in seconds from the first frame."""
    return np.array(
        [
            [float(i * clip_len), float(min((i + 1) * clip_len, duration_seconds))]
            for i in range(num_clips)
        ],
        dtype=np.float64,
    ).reshape(num_clips, 2)


def uniform_indices(num_items: int, num_samples: int) -> list[int]:
    """`num_samples` indices spread evenly over `range(num_items)`, first and last included.

    Same formula as PyTorchVideo's `UniformTemporalSubsample` (float32 `torch.linspace`, then
    truncation), so frame choices match it exactly; fewer items than samples repeat items.
    """
    if num_items < 1 or num_samples < 1:
        raise ValueError(
            f"need num_items >= 1 and num_samples >= 1, got {num_items}, {num_samples}"
        )
    positions = torch.linspace(0, num_items - 1, num_samples).clamp(0, num_items - 1)
    return positions.long().tolist()
