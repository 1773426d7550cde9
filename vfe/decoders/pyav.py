"""The default decoder: PyAV (its own bundled FFmpeg), one sequential pass per video.

Frames come out exactly as the FFmpeg command line presents them: edit lists honoured, display
rotation applied, exact rational timestamps, colour converted by FFmpeg's swscale to RGB24.
"""

import heapq
from collections import deque
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from vfe.errors import VfeError
from vfe.video import DecodeError, Frame, Timeline

# Frames leave the decoder in presentation order, but some containers (AVI with packed B-frames)
# attach timestamps in decode order. Each frame takes the smallest timestamp among the next
# REORDER_FRAMES ones, which undoes that and leaves increasing timestamps untouched; 16 is
# H.264's and HEVC's deepest reordering.
REORDER_FRAMES = 16
# A file whose packets end this many nominal frames (at least 0.1 s) before the duration its
# container declares was cut short: a truncated download or copy.
TRUNCATION_TOLERANCE_FRAMES = 2


def _rgb_of(frame: av.VideoFrame) -> torch.Tensor:
    """`(H, W, 3) uint8` in display orientation (as `ffmpeg` autorotates)."""
    array = frame.to_ndarray(format="rgb24")
    if frame.rotation % 360:
        array = np.ascontiguousarray(np.rot90(array, k=frame.rotation // 90))
    return torch.from_numpy(array)


class PyAVVideo:
    """A video decoded sequentially by PyAV on the CPU.

    `num_threads` is FFmpeg's decoding thread count (0: as many as FFmpeg likes).
    """

    @staticmethod
    def check(device: str) -> None:
        if device != "cpu":
            raise VfeError(
                f"--data.decoder pyav decodes on the CPU; for --data.decode_device {device} "
                "use --data.decoder torchcodec"
            )

    def __init__(self, path: Path, device: str = "cpu", num_threads: int = 1) -> None:
        self.check(device)
        self._container = av.open(str(path))
        if not self._container.streams.video:
            self._container.close()
            raise DecodeError("the file has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._stream.thread_count = num_threads

    def frames(self) -> Iterator[Frame]:
        stream = self._stream
        time_base = stream.time_base
        rate = stream.guessed_rate or stream.average_rate
        nominal = 1 / Fraction(rate) if rate else Fraction(0)
        timeline = Timeline(nominal)
        pending: deque[av.VideoFrame] = deque()
        candidate_ticks: list[int] = []  # a heap
        packets_end = None  # the latest packet end, in ticks

        def place(frame: av.VideoFrame) -> Frame:
            ticks = heapq.heappop(candidate_ticks) if candidate_ticks else None
            raw = None if ticks is None else ticks * time_base
            duration = frame.duration * time_base if frame.duration else None
            time_seconds, duration_seconds = timeline.place(raw, duration)
            return Frame(time_seconds, duration_seconds, lambda: _rgb_of(frame))

        try:
            for packet in self._container.demux(stream):
                if packet.is_corrupt:
                    raise DecodeError(f"corrupt packet at {_seconds(packet.dts, time_base)} s")
                start = packet.pts if packet.pts is not None else packet.dts
                if packet.size and start is not None:
                    end = start + (packet.duration or 0)
                    packets_end = end if packets_end is None else max(packets_end, end)
                for frame in packet.decode():
                    ticks = frame.pts if frame.pts is not None else frame.dts
                    if ticks is not None:
                        heapq.heappush(candidate_ticks, ticks)
                    pending.append(frame)
                    if len(pending) > REORDER_FRAMES:
                        yield place(pending.popleft())
            while pending:
                yield place(pending.popleft())
            self._check_complete(packets_end, nominal)
        finally:
            self._container.close()

    def _check_complete(self, packets_end: int | None, nominal: Fraction) -> None:
        """Raise if the packets stop well before the duration the container declares."""
        stream = self._stream
        if stream.duration is None or packets_end is None:
            return
        declared_end = (stream.start_time or 0) + stream.duration
        missing = (declared_end - packets_end) * stream.time_base
        if missing > max(TRUNCATION_TOLERANCE_FRAMES * nominal, Fraction(1, 10)):
            raise DecodeError(
                f"the file ends {float(missing):.2f} s before the "
                f"{float(stream.duration * stream.time_base):.2f} s its container declares "
                "(truncated?)"
            )


def _seconds(ticks: int | None, time_base: Fraction) -> str:
    return "?" if ticks is None else f"{float(ticks * time_base):.3f}"
