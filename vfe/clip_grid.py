"""Clip grid math: which frames form each clip, and which frames a backbone samples from a clip.

A video of `num_frames` decoded frames at average frame rate `fps` is cut into clips of
`F = round(clip_len_seconds * fps)` frames; clip i covers frames `[i*F, min((i+1)*F, num_frames))`.
The last clip may be shorter and is kept.
"""

import math

import torch

from vfe.errors import VfeError


def frames_per_clip(clip_len_seconds: float, fps: float) -> int:
    """Number of frames in a full clip: `round(clip_len_seconds * fps)`, at least 1."""
    if not (math.isfinite(clip_len_seconds) and clip_len_seconds > 0):
        raise VfeError(f"clip_len must be a positive number of seconds, got {clip_len_seconds!r}")
    if not (math.isfinite(fps) and fps > 0):
        raise VfeError(f"the video reports an unusable frame rate: {fps!r} fps")
    return max(1, round(clip_len_seconds * fps))


def clip_frame_ranges(
    num_frames: int, fps: float, clip_len_seconds: float
) -> list[tuple[int, int]]:
    """`[(start_frame, stop_frame), ...]`, stop exclusive, covering all `num_frames` frames."""
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    step = frames_per_clip(clip_len_seconds, fps)
    return [(start, min(start + step, num_frames)) for start in range(0, num_frames, step)]


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


def uniform_frame_indices(start_frame: int, stop_frame: int, num_samples: int) -> list[int]:
    """`num_samples` frame indices spread evenly over the clip `[start_frame, stop_frame)`."""
    return [start_frame + i for i in uniform_indices(stop_frame - start_frame, num_samples)]
