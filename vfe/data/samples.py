"""Frames -> samples for one backbone: every frame (image backbones) or N frames spread over
each clip (video backbones), with the empty windows of a timestamp gap held by the frame on
screen, and memory bounded however long a clip or a gap is."""

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import torch

from vfe.data.batching import BatchBuilder
from vfe.data.clip_grid import uniform_indices
from vfe.data.input_spec import AudioSpec, InputSpec, is_audio
from vfe.data.records import Samples
from vfe.decoding.video import Frame

# Decoded pictures a clip backbone may hold (per backbone and worker) while its clip is still
# open; past this, held frames are kept at the backbone's input size instead (4K60 with 10-s
# clips would otherwise hold 600 full-resolution frames, ~7.5 GB).
MAX_HELD_DECODED_BYTES = 256 << 20
# Held frames converted at once when they go over that bound (each converts to full-size RGB).
SPILL_FRAMES = 4


class Converter(Protocol):
    """Frames -> one backbone's samples."""

    packs: bool  # frames go to the model as decoded pictures where they can (convert_on model)

    def __call__(self, frames: list[Frame], packed: bool) -> Samples:
        """`(N, ...)` samples of the frames: packed pictures if `packed` and every frame packs
        to one layout, else RGB at the backbone's size."""
        ...

    def unpacked(self, samples: Samples) -> Samples:
        """Packed samples converted to RGB at the backbone's size here, in the worker."""
        ...


def means_every_frame(spec: InputSpec | AudioSpec) -> bool:
    """A clip's feature is the mean of one sample per frame of it (an image backbone on every
    frame): it can be combined from shorter windows."""
    if is_audio(spec):
        return False
    return spec.frames_per_clip is None and not spec.stack_frames and spec.ffmpeg_recipe is None


def uses_every_frame(spec: InputSpec | AudioSpec) -> bool:
    """The backbone samples every frame (an image backbone on every frame, or a recipe's filter
    graph, which reads them all): decoding cannot skip any for it."""
    if is_audio(spec):
        return False  # it reads the audio, and only the grid's times from the frames
    return spec.frames_per_clip is None or spec.ffmpeg_recipe is not None


def hold_clips(
    emitters: list["Emitter"], builder: BatchBuilder, clips: range, piece_size: int
) -> Iterator[dict[str, Any]]:
    """Clips without a frame of their own (a timestamp gap) show the previous frame; they are
    handed out a piece at a time, each followed by the batches it completes, so a gap of
    hours never builds all its clips at once."""
    for start in range(clips.start, clips.stop, piece_size):
        piece = range(start, min(start + piece_size, clips.stop))
        for emitter in emitters:
            emitter.hold(piece)
        while builder.full():
            yield builder.pop()


@dataclass(frozen=True)
class Destination:
    """Where an emitter's samples go: one backbone's batches, for one video, and which of the
    video's grids it fills. With a stride the video has `phases` interleaved grids
    (`vfe.data.clip_grid`); clip m of grid `phase` is the video's clip m*phases + phase."""

    builder: BatchBuilder
    model: str
    video_index: int
    phases: int = 1
    phase: int = 0


class Emitter:
    """Turns one backbone's frames into samples for the batch builder."""

    def __init__(self, destination: Destination, convert: Converter) -> None:
        self.destination = destination
        self.builder, self.model = destination.builder, destination.model
        self.convert = convert
        self.num_samples = 0
        self.previous: Frame | None = None  # the frame on screen: it holds empty windows

    def send(self, samples: Samples, clips: list[int]) -> None:
        """Hand samples of this grid's clips `clips` to the batch builder."""
        target = self.destination
        numbers = [clip * target.phases + target.phase for clip in clips]
        self.builder.add_samples(self.model, samples, target.video_index, numbers)
        self.num_samples += len(numbers)

    def samples_of(self, items: list["Frame | Samples"], packed: bool | None = None) -> Samples:
        """`(N, ...)` samples of frames (converted, each distinct frame of the call once: a
        frame held across a gap is converted once per piece of it) and of one-sample Samples
        already converted; packed pictures where all of them can be (`packed`, default: as the
        converter packs), else RGB at the backbone's size.

        No converted frame is kept across calls: with such a cache a forked DataLoader worker
        crashed (segmentation fault) now and then on a 40-minute gap; not understood yet.
        """
        packed = self.convert.packs if packed is None else packed
        done = {item.layout for item in items if isinstance(item, Samples)}
        if None in done or len(done) > 1:
            packed = False
        pending = list(
            {item.time_seconds: item for item in items if isinstance(item, Frame)}.values()
        )
        converted = self.convert(pending, packed) if pending else None
        layouts = done | ({converted.layout} if converted is not None else set())
        if len(layouts) > 1:  # packed and unpacked mixed (a picture size change, a spill)
            if converted is not None and converted.layout is not None:
                converted = self.convert(pending, False)
            items = [
                self.convert.unpacked(item)
                if isinstance(item, Samples) and item.layout is not None
                else item
                for item in items
            ]
        if converted is not None and len(pending) == len(items) and layouts == {converted.layout}:
            return converted  # each item a distinct frame, in order: no second copy
        rows: dict[Fraction, torch.Tensor] = {}
        if converted is not None:
            for frame, sample in zip(pending, converted.pixels, strict=True):
                rows[frame.time_seconds] = sample
        pixels = torch.stack(
            [
                rows[item.time_seconds] if isinstance(item, Frame) else item.pixels[0]
                for item in items
            ]
        )
        return Samples(pixels, layouts.pop() if len(layouts) == 1 else None)

    def hold(self, clips: range) -> None: ...

    def add(self, frame: Frame, clip_index: int) -> None: ...

    def finish(self) -> None: ...


class ImageSamples(Emitter):
    """Every frame of a clip is one `(C, H, W)` sample; frames are sent in chunks of the
    backbone's batch size as they arrive, so a clip is never held whole."""

    def __init__(self, destination: Destination, convert: Converter, chunk_size: int) -> None:
        super().__init__(destination, convert)
        self.chunk_size = chunk_size
        self._pending: list[tuple[int, Frame]] = []

    def hold(self, clips: range) -> None:
        """Clips without a frame of their own show the previous frame."""
        self._pending += [(clip_index, self.previous) for clip_index in clips]
        if len(self._pending) >= self.chunk_size:
            self.finish()

    def add(self, frame: Frame, clip_index: int) -> None:
        self._pending.append((clip_index, frame))
        self.previous = frame
        if len(self._pending) >= self.chunk_size:
            self.finish()

    def finish(self) -> None:
        if not self._pending:
            return
        clips = [clip_index for clip_index, _ in self._pending]
        self.send(self.samples_of([frame for _, frame in self._pending]), clips)
        self._pending = []


class WindowSamples(ImageSamples):
    """Every frame once, as a sample of its window of the stride's grid (windows S seconds
    long): overlapping clips of an image backbone are means over k = L/S consecutive windows,
    combined after encoding (`vfe.output.assembly`), so a frame is encoded once, not k times.
    `held` lists the windows (start, stop) with no frame of their own, held by the previous one."""

    def __init__(self, destination: Destination, convert: Converter, chunk_size: int) -> None:
        super().__init__(destination, convert, chunk_size)
        self.held: list[tuple[int, int]] = []

    def hold(self, clips: range) -> None:
        if clips:
            self.held.append((clips.start, clips.stop))
        super().hold(clips)


class ClipSamples(Emitter):
    """`frames_per_clip` frames spread uniformly over a clip: one `(C, T, H, W)` sample
    (`stack_frames`) or T `(C, H, W)` samples. A clip's frames are held until the next clip
    starts, undecoded to RGB while they fit in MAX_HELD_DECODED_BYTES, at the backbone's input
    size past that (the same samples either way: each frame is resized on its own)."""

    def __init__(
        self, destination: Destination, convert: Converter, spec: InputSpec, first_clip: int = 0
    ) -> None:
        super().__init__(destination, convert)
        self.spec = spec
        self._clip_index = first_clip
        self._items: list[Frame | Samples] = []  # a Samples: one frame already converted
        self._held_bytes = 0  # decoded pictures held in `_items`
        self.max_held_bytes = 0  # the most held at once (for tests and benchmarks)

    def hold(self, clips: range) -> None:
        """Clips without a frame of their own show the previous frame."""
        if not clips:
            return
        self.finish()
        held = self.samples_of([self.previous])  # converted once for the whole piece
        for clip_index in clips:
            self._emit(clip_index, [held])

    def add(self, frame: Frame, clip_index: int) -> None:
        if clip_index != self._clip_index:
            self.finish()
            self._clip_index = clip_index
        self.previous = frame
        if self._held_bytes + frame.num_bytes > MAX_HELD_DECODED_BYTES:
            raw = [i for i, item in enumerate(self._items) if isinstance(item, Frame)]
            for start in range(0, len(raw), SPILL_FRAMES):  # few full-size frames at a time
                chunk = raw[start : start + SPILL_FRAMES]
                # At the backbone's size: packed pictures would hold as much as decoded ones.
                converted = self.samples_of([self._items[i] for i in chunk], packed=False)
                for row, i in enumerate(chunk):
                    self._items[i] = Samples(converted.pixels[row : row + 1], None)
            self._held_bytes = 0
            self._items.append(self.samples_of([frame], packed=False))
            return
        self._items.append(frame)
        self._held_bytes += frame.num_bytes
        self.max_held_bytes = max(self.max_held_bytes, self._held_bytes)

    def finish(self) -> None:
        if self._items:
            self._emit(self._clip_index, self._items)
            self._items, self._held_bytes = [], 0

    def _emit(self, clip_index: int, items: list["Frame | Samples"]) -> None:
        picks = uniform_indices(len(items), self.spec.frames_per_clip)
        distinct = sorted(set(picks))  # a frame picked twice is converted once
        images = self.samples_of([items[i] for i in distinct])
        row_of = {frame_index: row for row, frame_index in enumerate(distinct)}
        samples = images.pixels[[row_of[i] for i in picks]]
        if self.spec.stack_frames:  # (T, C, H, W) -> (1, C, T, H, W)
            samples = samples.permute(1, 0, 2, 3).unsqueeze(0).contiguous()
        self.send(Samples(samples, images.layout), [clip_index] * len(samples))


class MiddleFrameSamples(Emitter):
    """One `(C, H, W)` sample per clip: the frame on screen just before the clip's middle
    (the last frame starting before it, possibly one of the clip before), which is the frame
    FFmpeg's `fps=1/clip_len` filter outputs for the clip (it rounds frame times to the
    nearest output time). Only the current pick is held, never the clip's frames."""

    def __init__(self, destination: Destination, convert: Converter, clip_len: Fraction) -> None:
        super().__init__(destination, convert)
        self.clip_len = clip_len
        self._clip_index: int | None = None
        self._pick: Frame | None = None

    def add(self, frame: Frame, clip_index: int) -> None:
        if clip_index != self._clip_index:
            self.finish()
            self._clip_index, self._pick = clip_index, self.previous
        # This grid starts at phase * stride = phase * L / phases.
        grid_start = Fraction(self.destination.phase, self.destination.phases)
        middle = (clip_index + Fraction(1, 2) + grid_start) * self.clip_len
        if self._pick is None or frame.time_seconds < middle:
            self._pick = frame
        self.previous = frame

    def hold(self, clips: range) -> None:
        """Clips without a frame of their own show the previous frame throughout."""
        if not clips:
            return
        self.finish()
        sample = self.samples_of([self.previous])
        pixels = sample.pixels.expand(len(clips), *sample.pixels.shape[1:]).contiguous()
        self.send(Samples(pixels, sample.layout), list(clips))

    def finish(self) -> None:
        if self._clip_index is not None and self._pick is not None:
            self.send(self.samples_of([self._pick]), [self._clip_index])
        self._clip_index, self._pick = None, None
