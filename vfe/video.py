"""Opening videos and decoding chosen frames; one class per decoding library.

Every decoder gives the same view of a video: `num_frames`, `average_fps`, the presentation
time range of any frame, and `get_frames(indices) -> (T, H, W, C) uint8` RGB.
"""

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from vfe.errors import VfeError


class Video(Protocol):
    """An opened video; frames are decoded only when asked for."""

    num_frames: int
    average_fps: float

    def frame_time_ranges(self, indices: list[int]) -> np.ndarray:
        """`(N, 2) float64`: start and end second of each frame, from presentation times."""
        ...

    def get_frames(self, indices: list[int]) -> torch.Tensor:
        """`(len(indices), H, W, 3) uint8` RGB frames; repeated indices are decoded once."""
        ...


class DecordVideo:
    """A video read with decord (CPU). Raises on open for files decord cannot parse."""

    def __init__(self, path: Path, num_threads: int = 1) -> None:
        import decord

        # FFmpeg's per-file warnings would otherwise flood stderr on large runs.
        decord.logging.set_level(decord.logging.QUIET)
        self._reader = decord.VideoReader(str(path), num_threads=num_threads)
        self.num_frames = len(self._reader)
        self.average_fps = float(self._reader.get_avg_fps())

    def frame_time_ranges(self, indices: list[int]) -> np.ndarray:
        # decord keeps times as float32; rounding to microseconds removes its noise
        # (3.4000000953674316 -> 3.4) without losing real precision.
        times = self._reader.get_frame_timestamp(list(indices)).astype(np.float64)
        return np.round(times, 6)

    def get_frames(self, indices: list[int]) -> torch.Tensor:
        unique = sorted(set(indices))
        frames = torch.from_numpy(self._reader.get_batch(unique).asnumpy())
        if len(unique) == len(indices) and unique == list(indices):
            return frames
        position = {frame_index: row for row, frame_index in enumerate(unique)}
        return frames[[position[i] for i in indices]]


DECODERS: dict[str, type] = {"decord": DecordVideo}


def open_video(path: Path, decoder: str = "decord") -> Video:
    """Open `path` with the named decoder; errors from the file itself propagate unchanged."""
    if decoder not in DECODERS:
        raise VfeError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODERS)}")
    return DECODERS[decoder](path)
