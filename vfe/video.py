"""Opening videos and decoding chosen frames; one class per decoding library.

Every decoder gives the same view of a video: `num_frames`, `average_fps`, and
`get_frames(indices)` -> `DecodedFrames`: `(T, H, W, 3) uint8` RGB frames with each frame's
presentation start and end in seconds.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from vfe.errors import VfeError


@dataclass
class DecodedFrames:
    frames: torch.Tensor  # (T, H, W, 3) uint8, on the decoder's device
    start_seconds: np.ndarray  # (T,) float64 presentation time of each frame
    end_seconds: np.ndarray  # (T,) float64 start + duration


class Video(Protocol):
    """An opened video; frames are decoded only when asked for."""

    num_frames: int
    average_fps: float

    def get_frames(self, indices: list[int]) -> DecodedFrames:
        """Frames at `indices` (ascending, repeats allowed); each distinct frame decoded once."""
        ...


def _expand_repeats(indices: list[int], unique: list[int], decoded: DecodedFrames) -> DecodedFrames:
    if unique == list(indices):
        return decoded
    position = {frame_index: row for row, frame_index in enumerate(unique)}
    rows = [position[i] for i in indices]
    return DecodedFrames(
        decoded.frames[rows], decoded.start_seconds[rows], decoded.end_seconds[rows]
    )


class DecordVideo:
    """A video read with decord on the CPU. Raises on open for files decord cannot parse."""

    def __init__(self, path: Path, device: str = "cpu", num_threads: int = 1) -> None:
        import decord

        if device != "cpu":
            raise VfeError(f"the decord decoder runs on the CPU only, not {device!r}")
        # FFmpeg's per-file warnings would otherwise flood stderr on large runs.
        decord.logging.set_level(decord.logging.QUIET)
        self._reader = decord.VideoReader(str(path), num_threads=num_threads)
        self.num_frames = len(self._reader)
        self.average_fps = float(self._reader.get_avg_fps())

    def get_frames(self, indices: list[int]) -> DecodedFrames:
        unique = sorted(set(indices))
        frames = torch.from_numpy(self._reader.get_batch(unique).asnumpy())
        # decord keeps times as float32; rounding to microseconds removes its noise
        # (3.4000000953674316 -> 3.4) without losing real precision.
        times = np.round(self._reader.get_frame_timestamp(unique).astype(np.float64), 6)
        return _expand_repeats(indices, unique, DecodedFrames(frames, times[:, 0], times[:, 1]))


class TorchcodecVideo:
    """A video read with torchcodec, on the CPU or (NVDEC) on a CUDA device; needs FFmpeg."""

    def __init__(self, path: Path, device: str = "cpu", num_threads: int = 1) -> None:
        from torchcodec.decoders import VideoDecoder

        self._decoder = VideoDecoder(
            str(path),
            dimension_order="NHWC",
            num_ffmpeg_threads=num_threads,
            device=device,
            seek_mode="exact",
        )
        metadata = self._decoder.metadata
        self.num_frames = int(metadata.num_frames)
        self.average_fps = float(metadata.average_fps)

    def get_frames(self, indices: list[int]) -> DecodedFrames:
        unique = sorted(set(indices))
        batch = self._decoder.get_frames_at(unique)
        start = np.round(batch.pts_seconds.double().numpy(), 6)
        end = np.round((batch.pts_seconds + batch.duration_seconds).double().numpy(), 6)
        return _expand_repeats(indices, unique, DecodedFrames(batch.data, start, end))


DECODERS: dict[str, type] = {"decord": DecordVideo, "torchcodec": TorchcodecVideo}
DECODE_DEVICES = ("cpu", "cuda")


def check_decoder(decoder: str, device: str = "cpu") -> None:
    """Fail early, with what to install, if the decoder cannot run here."""
    if decoder not in DECODERS:
        raise VfeError(f"--data.decoder {decoder!r} is unknown; choose one of {sorted(DECODERS)}")
    if device not in DECODE_DEVICES:
        raise VfeError(f"--data.decode_device {device!r} is unknown; choose cpu or cuda")
    if device == "cuda" and decoder != "torchcodec":
        raise VfeError(f"--data.decode_device cuda needs --data.decoder torchcodec, not {decoder}")
    if decoder == "torchcodec":
        try:
            import torchcodec.decoders  # noqa: F401
        except (ImportError, RuntimeError, OSError) as error:
            raise VfeError(
                "--data.decoder torchcodec needs the torchcodec package and a system FFmpeg "
                f"4-7 (pip install torchcodec; apt-get install ffmpeg): {error}"
            ) from error


def open_video(path: Path, decoder: str = "decord", device: str = "cpu") -> Video:
    """Open `path` with the named decoder; errors from the file itself propagate unchanged."""
    if decoder not in DECODERS:
        raise VfeError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODERS)}")
    return DECODERS[decoder](path, device=device)
