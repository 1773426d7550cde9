"""decord (the original design's decoder): fast on clean H.264 MP4, wrong on many real files.

It reads edit-list MP4s, MPEG-TS, packed-B-frame AVI and VFR Matroska wrongly without an error
(docs/output.md: "Which files are exact"); kept for runs that depend on its earlier output.
"""

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import decord
import torch

from vfe.decoding.video import (
    DecodeError,
    Frame,
    Timeline,
    check_complete,
    declared_video_duration_seconds,
    seconds_fraction,
)
from vfe.errors import VfeError

# Frames decoded per call: sequential reads without holding a whole video.
CHUNK_FRAMES = 16


class DecordVideo:
    """A video read with decord on the CPU. Raises on open for files decord cannot parse."""

    file_errors = (decord.DECORDError, RuntimeError, DecodeError)

    @staticmethod
    def check(device: str) -> None:
        if device != "cpu":
            raise VfeError(
                f"--data.decode_device {device} needs --data.decoder pyav (with --data.convert_on "
                "model) or torchcodec"
            )

    def __init__(self, path: Path, device: str = "cpu", num_threads: int = 1) -> None:
        self.check(device)
        self._path = path
        self.bytes_read = 0  # the library does not say how far it has read
        self.decode_errors = 0  # nor which errors it concealed
        self.hardware_frames = None  # nor which frames NVDEC decoded
        self.decode_mode = "sequential"  # every frame, in order
        # FFmpeg's per-file warnings would otherwise flood stderr on large runs.
        decord.logging.set_level(decord.logging.QUIET)
        self._reader = decord.VideoReader(str(path), num_threads=num_threads)
        fps = self._reader.get_avg_fps()
        self._nominal = seconds_fraction(1 / fps) if fps > 0 else Fraction(0)

    def frames(self, start_seconds: Fraction = Fraction(0)) -> Iterator[Frame]:
        if start_seconds:
            raise NotImplementedError("this decoder decodes whole videos only")
        timeline = Timeline(self._nominal)
        num_frames = len(self._reader)
        for chunk_start in range(0, num_frames, CHUNK_FRAMES):
            indices = list(range(chunk_start, min(chunk_start + CHUNK_FRAMES, num_frames)))
            images = torch.from_numpy(self._reader.get_batch(indices).asnumpy())
            times = self._reader.get_frame_timestamp(indices).tolist()
            for image, (start, end) in zip(images, times, strict=True):
                time_seconds, duration = timeline.place(
                    seconds_fraction(start), seconds_fraction(end - start)
                )
                yield Frame(time_seconds, duration, lambda image=image: image, image.nbytes)
        if num_frames:
            # decord counts only the frames present: compare their span with the declared end.
            first, last = self._reader.get_frame_timestamp([0, num_frames - 1]).tolist()
            declared = declared_video_duration_seconds(self._path)
            if declared is not None:
                check_complete(
                    seconds_fraction(last[1] - first[0]), declared, declared, self._nominal
                )
