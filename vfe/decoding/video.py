"""Decoded frames in presentation order, the same view whatever the decoding library.

A decoder opens a file (errors from the file itself propagate unchanged, so the dataset can
record them) and streams every frame once, in presentation order, with its exact time from the
first frame. The libraries differ in which files they get right: see docs/output.md's table.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol

import torch

from vfe.decoding.colour import FrameLayout, packed_shape
from vfe.errors import VfeError


@dataclass(frozen=True)
class PackedPicture:
    """A decoded picture to be packed as one uint8 tensor (`vfe.decoding.colour`): written
    straight into its place in a batch, so it is copied once."""

    layout: FrameLayout
    device: torch.device  # where the picture is (NVDEC's stay on the GPU)
    # Into a (rows, cols) uint8 tensor on `device`; on a GPU, after `ready_to_read(device)`.
    write: Callable[[torch.Tensor], None]

    def tensor(self) -> torch.Tensor:
        """The picture packed on its own, `(1, rows, cols) uint8`."""
        shape = (1, *packed_shape(self.layout.height, self.layout.width))
        packed = torch.empty(shape, dtype=torch.uint8, device=self.device)
        ready_to_read(self.device)
        self.write(packed[0])
        return packed


def ready_to_read(device: torch.device) -> None:
    """Wait for the GPU's decoder: NVDEC writes pictures on FFmpeg's own CUDA stream, which
    PyAV does not expose (its DLPack export asks the reader to synchronise). Once per batch of
    pictures (`vfe.data.batching.BatchBuilder.read_deferred`), not per picture or clip: a
    device-wide wait also waits for the model's work queued meanwhile."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _not_packable() -> None:
    return None


class DecodeError(Exception):
    """The file decoded only part-way (truncated, corrupt packets): never a shortened output."""


@dataclass(frozen=True)
class Frame:
    """One presented frame. `rgb()` converts on demand, so frames a backbone does not sample
    cost no colour conversion."""

    time_seconds: Fraction  # presentation time from the video's first frame
    duration_seconds: Fraction  # how long it stays on screen (the nominal frame duration, or
    # 0, where the file does not say)
    rgb: Callable[[], torch.Tensor]  # -> (H, W, 3) uint8, display orientation
    num_bytes: int = 0  # memory the decoded picture holds until converted (for bounds)
    # -> the picture as decoded, for conversion on the model's device, or None where that does
    # not apply (a decoder that only gives RGB, a format `vfe.decoding.colour` does not convert)
    packed: Callable[[], PackedPicture | None] = _not_packable
    # -> the decoder's own picture (PyAV's `av.VideoFrame`), for FFmpeg's filters
    # (`vfe.decoding.ffmpeg_filters`), or None where the decoder gives only RGB
    decoded: Callable[[], Any] = _not_packable
    # Says the picture is about to be asked for, with the others of the same call: a sparse
    # decode (`vfe.decoding.sparse`) then decodes them all in one pass rather than skip some
    want: Callable[[], None] = _not_packable


@dataclass(frozen=True)
class StreamFacts:
    """What `ffprobe` reports of the video stream, as recipes that read it use it (HERO's)."""

    width: int  # as coded (before any rotation)
    height: int
    average_rate_hz: Fraction | None  # `avg_frame_rate`; None where the file gives none
    # The stream's `duration`; None where the file gives no stream duration or no frame count
    # (HERO's probe reads both at once and keeps every clip without them: Matroska, WebM).
    duration_seconds: Fraction | None


class Video(Protocol):
    """An opened video whose frames are decoded only while iterating.

    Decoders whose class sets `supports_segments` can start mid-file, frame-exactly, and give
    `split_duration_seconds(path)` for files that may be split; long videos are then split over
    workers (`vfe.data.work_plan`). Each decoder class names in `file_errors` the exceptions a
    bad file makes it raise: only those count as a failure of the video.
    """

    bytes_read: int  # how far into the file decoding has got (0 where the library hides it)
    decode_errors: int  # frames decoded with errors the decoder concealed, so far (0 where the
    # library does not say)
    hardware_frames: int | None  # frames the GPU's decoder (NVDEC) decoded, so far (None
    # where the library does not say)
    decode_mode: str  # "sparse" (only the frames used, and those they need) or "sequential"
    # The first frame's time on the file's own axis, once frames are iterated (pyav only:
    # audio backbones place the audio by it)
    first_frame_seconds: Fraction

    def frames(self, start_seconds: Fraction = Fraction(0)) -> Iterator[Frame]:
        """Every frame once, in presentation order; times strictly increase from the first
        frame's 0. From `start_seconds` > 0 (segment decoders only): the frames from there on,
        preceded by at least the one on screen just before it (callers skip the earlier ones)."""
        ...


def supports_segments(decoder: str) -> bool:
    return getattr(_decoder_class(decoder), "supports_segments", False)


def split_duration_seconds(path: Path, decoder: str) -> float | None:
    """A segment decoder's reading of the video stream's duration, or None where the file
    must not be split (its container does not seek exactly)."""
    return _decoder_class(decoder).split_duration_seconds(path)


def file_errors(decoder: str) -> tuple[type[BaseException], ...]:
    """The exceptions the decoder raises for a bad file (anything else is a bug: it stops the
    run with its traceback)."""
    return _decoder_class(decoder).file_errors


def declared_video_duration_seconds(path: Path) -> Fraction | None:
    """The duration the container declares for its first video stream (read with PyAV, which
    vfe always has), for decoders whose library does not say."""
    import av

    from vfe.decoding.source import av_input

    with av.open(av_input(path)) as container:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        if stream.duration is not None:
            return stream.duration * stream.time_base
        if container.duration is not None:
            return Fraction(container.duration, av.time_base)
    return None


# A file whose data ends this many nominal frames (at least 0.1 s) before the duration its
# container declares was cut short: a truncated download or copy.
TRUNCATION_TOLERANCE_FRAMES = 2


def check_complete(
    decoded_end_seconds: Fraction,
    declared_end_seconds: Fraction,
    declared_duration_seconds: Fraction,
    nominal_frame_seconds: Fraction,
) -> None:
    """The one completeness rule of every decoder: raise `DecodeError` if what was decoded ends
    well before the end the container declares (both on the same time axis)."""
    missing = declared_end_seconds - decoded_end_seconds
    if missing > max(TRUNCATION_TOLERANCE_FRAMES * nominal_frame_seconds, Fraction(1, 10)):
        raise DecodeError(
            f"the file ends {float(missing):.2f} s before the "
            f"{float(declared_duration_seconds):.2f} s its container declares (truncated?)"
        )


def seconds_fraction(seconds: float) -> Fraction:
    """A float time in seconds as a Fraction, to the microsecond (the libraries' own precision
    is float32 or float64 seconds, so nothing finer is real)."""
    return Fraction(round(seconds * 1_000_000), 1_000_000)


class Timeline:
    """Turns raw timestamps into exact times from the first frame that strictly increase.

    Where a file gives no usable timestamp for a frame (missing, or not after the previous
    frame's), the frame follows the previous one by that frame's duration, as the FFmpeg command
    line does.
    """

    def __init__(self, nominal_frame_duration: Fraction) -> None:
        self.nominal_frame_duration = nominal_frame_duration
        self._first: Fraction | None = None
        self._previous: Fraction | None = None
        self._previous_duration = Fraction(0)

    @property
    def first_seconds(self) -> Fraction | None:
        """The first frame's time on the file's own axis (None before it is placed)."""
        return self._first

    def start_at(self, first_raw_seconds: Fraction) -> None:
        """Measure times from `first_raw_seconds` (the video's first frame), for a decode that
        starts mid-file."""
        self._first = first_raw_seconds

    def place(
        self, raw_seconds: Fraction | None, raw_duration: Fraction | None
    ) -> tuple[Fraction, Fraction]:
        """`(time from the first frame, duration)` of the next frame, both in seconds."""
        if self._previous is not None and (raw_seconds is None or raw_seconds <= self._previous):
            if not self._previous_duration:
                raise DecodeError(
                    f"a frame after {float(self._previous - self._first)} s has no usable "
                    "timestamp and the file gives no frame duration to place it by"
                )
            raw_seconds = self._previous + self._previous_duration
        elif raw_seconds is None:  # the first frame
            raw_seconds = Fraction(0)
        if self._first is None:
            self._first = raw_seconds
        duration = raw_duration if raw_duration else self.nominal_frame_duration
        self._previous, self._previous_duration = raw_seconds, duration
        return raw_seconds - self._first, duration


# name -> "module:class"; imported on use, so a missing optional library only matters if chosen.
DECODERS: dict[str, str] = {
    "pyav": "vfe.decoding.pyav:PyAVVideo",
    "decord": "vfe.decoding.decord:DecordVideo",
    "torchcodec": "vfe.decoding.torchcodec:TorchcodecVideo",
}
DEFAULT_DECODER = "pyav"
DECODE_DEVICES = ("cpu", "cuda")


def _decoder_class(decoder: str) -> type:
    module_name, class_name = DECODERS[decoder].split(":")
    return getattr(import_module(module_name), class_name)


def check_decoder(decoder: str, device: str = "cpu") -> None:
    """Fail early, with what to install, if the decoder cannot run here."""
    if decoder not in DECODERS:
        raise VfeError(f"--data.decoder {decoder!r} is unknown; choose one of {sorted(DECODERS)}")
    if device not in DECODE_DEVICES:
        raise VfeError(f"--data.decode_device {device!r} is unknown; choose cpu or cuda")
    try:
        decoder_class = _decoder_class(decoder)
    except (ImportError, RuntimeError, OSError) as error:
        raise VfeError(
            f"--data.decoder {decoder} cannot be loaded here ({error}); install it with "
            f"pip install -e '.[{decoder}]' (docs/output.md: the decoder table)"
        ) from error
    decoder_class.check(device)


def decoder_version(decoder: str) -> str:
    """The version of the library behind a decoder name (recorded in provenance)."""
    from importlib import metadata

    package = {"pyav": "av"}.get(decoder, decoder)
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def open_video(
    path: Path,
    decoder: str = DEFAULT_DECODER,
    device: str = "cpu",
    num_threads: int = 1,
    sparse: bool = False,
) -> Video:
    """Open `path` with the named decoder; errors from the file itself propagate unchanged.
    `sparse`: the caller uses few frames, so a decoder that can decodes only those
    (`vfe.decoding.sparse`; PyAV on the CPU); the others decode every frame."""
    if decoder not in DECODERS:
        raise VfeError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODERS)}")
    decoder_class = _decoder_class(decoder)
    if sparse and getattr(decoder_class, "supports_sparse", False):
        return decoder_class(path, device=device, num_threads=num_threads, sparse=True)
    return decoder_class(path, device=device, num_threads=num_threads)
