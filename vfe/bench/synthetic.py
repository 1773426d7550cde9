"""Synthetic videos with known content, frame count and frame rate; writing needs PyAV."""

import subprocess
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


def write_program_stream(path: Path, num_frames: int, fps: int = 25, seed: int = 3) -> Path:
    """An MPEG-2 program stream (.mpg) with B-frames, muxed through FFmpeg's library API (as
    PyAV, and many capture tools, mux it): after a seek its timestamps are half a frame off
    the sequential decode's, so it must never be split into segments."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mpeg") as container:
        stream = container.add_stream("mpeg2video", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.gop_size = 20
        stream.codec_context.max_b_frames = 2
        stream.bit_rate = 2_000_000
        for array in moving_frames(num_frames, 64, 96, seed):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# Files made the way real datasets are made, each a case some decoder gets wrong (docs/output.md:
# "Which files are exact"). name -> ffmpeg arguments after `-f lavfi -i testsrc2=...` (or, for
# cuts, from an intermediate source), and the encoder it needs.
_TESTSRC = "testsrc2=size=96x64:rate={rate}"
_X264 = ["-c:v", "libx264", "-g", "12", "-bf", "2", "-pix_fmt", "yuv420p"]
# 20 frames 1/30 s apart, 20 frames 3/30 s apart, a 2.5 s gap, 20 frames 1/30 s apart.
VFR_FRAME_DURATIONS = [1] * 20 + [3] * 19 + [3 + 75] + [1] * 20
REAL_WORLD_VIDEOS: dict[str, tuple[str, str, list[str]]] = {
    # name: (encoder needed, source rate, output options)
    "edit_list_cut.mp4": ("libx264", "25", []),  # built by a stream-copy cut, see below
    "broadcast.ts": ("libx264", "25", ["-t", "3", *_X264, "-f", "mpegts"]),
    "xvid_bframes.avi": ("libxvid", "25", ["-t", "3", "-c:v", "libxvid", "-bf", "2", "-g", "12"]),
    "phone_x265.mp4": (
        "libx265",
        "25",
        ["-t", "3", "-c:v", "libx265", "-x265-params", "log-level=error", "-pix_fmt", "yuv420p"],
    ),
    "av1.mp4": ("libsvtav1", "25", ["-t", "2.5", "-c:v", "libsvtav1", "-preset", "12"]),
    "vfr_gap.mkv": ("", "30", []),  # written by PyAV, see below
    "ntsc_29.97.mp4": ("libx264", "30000/1001", ["-t", "3", *_X264]),
    "rotated_90.mp4": ("libx264", "25", []),  # rotation metadata on a stream copy, see below
    "program_stream.mpg": ("", "25", []),  # MPEG-2 with B-frames, muxed by PyAV, see below
}


def ffmpeg_encoders() -> set[str]:
    """Video encoders of the `ffmpeg` command line here (empty without one)."""
    try:
        listing = subprocess.run(
            ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return set()
    return {line.split()[1] for line in listing.splitlines() if line.startswith(" V")}


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


_STREAM_COPIES = ("edit_list_cut.mp4", "rotated_90.mp4")  # made from the source by `ffmpeg`


def write_real_world_videos(folder: Path) -> dict[str, Path]:
    """Write the `REAL_WORLD_VIDEOS` whose encoder the `ffmpeg` CLI here has (without one, only
    those PyAV writes: the GPU machine has no `ffmpeg`); name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    encoders = ffmpeg_encoders()
    written = {}
    source = folder / ".source.mp4"  # 4 s of H.264 with B-frames, for the stream copies
    if encoders:
        _ffmpeg("-f", "lavfi", "-i", _TESTSRC.format(rate=25), "-t", "4", *_X264, str(source))
    for name, (encoder, rate, options) in REAL_WORLD_VIDEOS.items():
        if (encoder and encoder not in encoders) or (name in _STREAM_COPIES and not encoders):
            continue
        path = folder / name
        if name == "vfr_gap.mkv":  # a phone or screen recording: frames when something changes
            write_video(path, 60, 30, frame_durations=VFR_FRAME_DURATIONS)
        elif name == "edit_list_cut.mp4":  # how moment-retrieval datasets cut clips
            _ffmpeg("-ss", "1.5", "-i", str(source), "-t", "2", "-c", "copy", str(path))
        elif name == "program_stream.mpg":  # DVD/broadcast captures; seeks land off-timeline
            write_program_stream(path, 100, 25)
        elif name == "rotated_90.mp4":  # a phone held upright
            _ffmpeg("-i", str(source), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(path))
        else:
            _ffmpeg("-f", "lavfi", "-i", _TESTSRC.format(rate=rate), *options, str(path))
        written[name] = path
    source.unlink(missing_ok=True)
    return written
