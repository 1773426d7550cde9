"""Synthetic videos with known content, frame count and frame rate; writing needs PyAV."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def moving_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """`(T, H, W, 3) uint8`: a smooth colour field plus a bright square that moves every frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    side = max(4, min(height, width) // 4)
    for t in range(num_frames):
        for c in range(3):
            wave = np.sin(xx / width * 4 + yy / height * 3 + phases[c] + t * 0.15)
            frames[t, :, :, c] = (127 + 100 * wave).astype(np.uint8)
        top = (t * 3) % max(1, height - side)
        left = (t * 5) % max(1, width - side)
        frames[t, top : top + side, left : left + side] = 255
    return frames


def write_video(
    path: Path,
    num_frames: int,
    fps: int | Fraction = 25,
    height: int = 64,
    width: int = 96,
    seed: int = 0,
    frame_durations: list[int] | None = None,
) -> Path:
    """Write an H.264 mp4 of `moving_frames`; `frame_durations` (in 1/fps ticks) makes it VFR."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = moving_frames(num_frames, height, width, seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Near-lossless keeps decoded frames close to `frames` while staying small.
        stream.options = {"crf": "10", "preset": "veryfast"}
        if frame_durations is not None:
            stream.codec_context.time_base = Fraction(1, int(fps))
        pts = 0
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if frame_durations is not None:
                frame.pts = pts
                frame.time_base = Fraction(1, int(fps))
                pts += frame_durations[index]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An mp4 container holding only an AAC audio stream (no video stream)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = 16000
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        samples = np.zeros((1, int(rate * seconds)), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_faststart_video(path: Path, num_frames: int, fps: int = 25) -> Path:
    """Like `write_video`, with the index (moov) in front, so a truncated copy still opens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = moving_frames(num_frames, 64, 96)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.options = {"crf": "10", "preset": "veryfast"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
