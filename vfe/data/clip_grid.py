"""Clip grid math: which frames form each clip, and which frames a backbone samples from a clip.

Clips are windows of presentation time (the contract's Clips section). With L = clip_len and
t_k the exact time of frame k from the first frame, clip i holds the frames with
i*L <= t_k < (i+1)*L. A window in which no frame starts (a gap in a variable-frame-rate file)
holds the frame on screen at its start, i.e. the last frame before it. Clips run from 0 to
floor(t_last / L). All times are `Fraction`s, so no clip boundary depends on float rounding.

Two options change the grid (neither is the contract's default):
- a stride S with L = k*S (overlapping clips): clip i is [i*S, i*S + L), for i from 0 to
  floor(t_last / S). It is k interleaved grids of length L, grid j starting at j*S; clip m of
  grid j is clip m*k + j.
- the `round` tail rule: a clip is kept only when its middle (i*S + L/2) is not after the
  video's end, at least one clip kept. It is the rule of FFmpeg's `fps=1/L` filter (rounding to
  the nearest output time), so a 10.5-s video has 5 two-second clips, a 9-s one 5.
"""

import math
from fractions import Fraction

import numpy as np
import torch

from vfe.errors import VfeError

# Bumped whenever the rule above changes, so files made under another rule can be told apart.
GRID_VERSION = 2

TAIL_RULES = ("keep", "round")  # keep: the contract's grid; round: FFmpeg fps=1/L's row count


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

    def __init__(self, clip_len: Fraction, first_clip: int = 0, late_start: bool = False) -> None:
        """`first_clip` > 0: frames fed start at that clip (a segment of the video), the first
        at or after its start; clips before it are not counted as held. `late_start`: the
        first frame fed may come after time 0 (a grid starting between frames, as the later
        grids of a stride do); clips before it are held by the frame before."""
        self.clip_len = clip_len
        self.num_clips = first_clip
        self.late_start = late_start
        self._last_time: Fraction | None = None

    def add(self, time_seconds: Fraction) -> tuple[int, range]:
        if self._last_time is not None and time_seconds <= self._last_time:
            raise ValueError(
                f"frame times must increase: {float(time_seconds)} s after "
                f"{float(self._last_time)} s"
            )
        if (
            self._last_time is None
            and self.num_clips == 0
            and time_seconds != 0
            and not self.late_start
        ):
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


def clip_windows(
    num_clips: int,
    clip_len: Fraction,
    duration_seconds: Fraction,
    clip_stride: Fraction | None = None,
) -> np.ndarray:
    """`(num_clips, 2) float64`: `[i*S, min(i*S + L, duration)]` in seconds from the first
    frame (S = `clip_stride`, default L)."""
    stride = clip_len if clip_stride is None else clip_stride
    return np.array(
        [
            [float(i * stride), float(min(i * stride + clip_len, duration_seconds))]
            for i in range(num_clips)
        ],
        dtype=np.float64,
    ).reshape(num_clips, 2)


def stride_phases(clip_len: Fraction, clip_stride: Fraction) -> int:
    """k = L / S, the number of interleaved grids of a stride; an error unless whole."""
    phases = clip_len / clip_stride
    if clip_stride <= 0 or phases.denominator != 1:
        raise VfeError(
            f"--clip_stride {float(clip_stride)} must divide --clip_len {float(clip_len)} a whole "
            "number of times (e.g. 1 or 0.5 for 2-s clips)"
        )
    return int(phases)


def clips_kept(
    num_clips: int,
    clip_len: Fraction,
    duration_seconds: Fraction,
    tail: str,
    clip_stride: Fraction | None = None,
) -> int:
    """How many of a video's `num_clips` clips the tail rule keeps (see the module doc)."""
    if tail == "keep":
        return num_clips
    stride = clip_len if clip_stride is None else clip_stride
    middle_room = duration_seconds - clip_len / 2  # clip i is kept if i*S <= this
    whole = math.floor(middle_room / stride) + 1 if middle_room >= 0 else 0
    return max(1, min(num_clips, whole))


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
