"""Videos -> batches of preprocessed clip samples for one or several backbones, every frame
decoded once, sequentially, inside workers.

The dataset is iterable: each DataLoader worker of a rank decodes its own list of work items
(`vfe.data.work_plan`): whole videos, or segments of whole clips of a long video, each decoded
sequentially from a keyframe before it. Frames are grouped into clips of presentation time as
they stream (`vfe.data.clip_grid`), so memory holds at most one clip. Each backbone (by name) gets
the frames its InputSpec asks for, resized its way, in batches of its own size. A batch is:

    models:      {name: {pixels, video_index, clip_index}} for the backbones with samples in it:
                 pixels (B, C, H, W) or (B, C, T, H, W) uint8; video_index, clip_index list[int]
                 (B) (lists, not tensors: they stay on the host when Lightning moves the batch)
    videos:      list[dict] videos (or segments) whose decoding started: index, relative_path,
                 size_bytes, mtime_ns, fingerprint, num_segments, models (the backbones it is
                 decoded for)
    ends:        list[dict] segments fully decoded: index, first_clip, num_samples ({name: n}),
                 num_frames, clip_length, decode_errors (concealed by the decoder: 0 unless
                 allowed), last (for the segment that reached the video's end: num_clips,
                 duration_seconds as a Fraction; else None)
    failures:    list[dict] videos (or segments) that could not be decoded: index, path,
                 relative_path, stage, error, models
    decoded_bytes: how far decoding advanced through the files, counting only bytes whose samples
                 are all in this batch or earlier ones (so progress follows the model)
    decode_seconds, preprocess_seconds: worker time spent on this batch's samples (for benchmarks)

Samples of several videos may share a batch, and a segment's end may arrive before its last
samples; the writer reassembles them per backbone and video.
"""

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from vfe.data.batching import BatchBuilder
from vfe.data.clip_grid import ClipAssigner, clip_length_fraction, uniform_indices
from vfe.data.input_spec import InputSpec
from vfe.data.paths import VideoEntry, video_fingerprint
from vfe.data.transforms import resize_and_center_crop
from vfe.data.work_plan import WorkItem, split_over_workers
from vfe.decoding.video import DEFAULT_DECODER, DecodeError, Frame, file_errors, open_video

# Decoded pictures a clip backbone may hold (per backbone and worker) while its clip is still
# open; past this, held frames are kept at the backbone's input size instead (4K60 with 10-s
# clips would otherwise hold 600 full-resolution frames, ~7.5 GB).
MAX_HELD_DECODED_BYTES = 256 << 20
# Held frames converted at once when they go over that bound (each converts to full-size RGB).
SPILL_FRAMES = 4

Convert = Callable[[list[Frame]], torch.Tensor]  # frames -> (N, C, h, w) uint8 samples


def describe_error(error: BaseException, max_chars: int = 300) -> str:
    """`Type: first line of the message`, without decord's `[time] /source/path:line:` prefixes."""
    lines = str(error).strip().splitlines() or [""]
    message = re.sub(r"(\[[\d:]+\] \S+:\d+: )+", "", lines[0]).strip()
    return f"{type(error).__name__}: {message}"[:max_chars]


class _FileError(Exception):
    """A decoding library failed on the file itself; `stage` says where."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(describe_error(error))
        self.stage = stage


class VideoClipDataset(IterableDataset):
    """Yields ready batches (the DataLoader runs with `batch_size=None`); see the module doc.

    Args:
        specs: each backbone's InputSpec, by name.
        batch_sizes: samples per batch, by backbone name.
        work: one list of work items per DataLoader worker (one list without workers);
            default: whole videos shared out by size over however many workers iterate it.
        video_models: the backbones each video is decoded for (resume may need only some);
            default: all.
        allow_concealed_errors: write videos whose decoder reported (and concealed) errors in
            the data, recording the count; by default such a video is a failure.
    """

    def __init__(
        self,
        videos: list[VideoEntry],
        specs: dict[str, InputSpec],
        clip_len_seconds: float,
        batch_sizes: dict[str, int],
        work: list[list[WorkItem]] | None = None,
        decoder: str = DEFAULT_DECODER,
        decode_device: str = "cpu",
        decode_threads: int = 1,
        video_models: list[tuple[str, ...]] | None = None,
        allow_concealed_errors: bool = False,
    ) -> None:
        self.videos = videos
        self.specs = specs
        self.clip_len_seconds = clip_len_seconds
        self.clip_len = clip_length_fraction(clip_len_seconds)
        self.batch_sizes = batch_sizes
        self.work = work
        self.decoder = decoder
        self.decode_device = decode_device
        self.decode_threads = decode_threads
        self.video_models = video_models
        self.allow_concealed_errors = allow_concealed_errors

    def worker_items(self) -> list[WorkItem]:
        """This DataLoader worker's work items."""
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        work = self.work
        if work is None:
            sizes = [video.size_bytes for video in self.videos]
            work = split_over_workers(
                list(range(len(self.videos))), sizes, num_workers, self.clip_len, None, 0.0
            )
        if len(work) != num_workers:
            raise RuntimeError(f"work planned for {len(work)} workers, run with {num_workers}")
        return work[worker_id]

    def models_of(self, video_index: int) -> tuple[str, ...]:
        if self.video_models is None:
            return tuple(self.specs)
        return self.video_models[video_index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        builder = BatchBuilder(self.batch_sizes)
        for item in self.worker_items():
            try:
                yield from self._add_item(builder, item)
            except _FileError as error:
                entry = self.videos[item.video_index]
                builder.add_failure(
                    {
                        "index": item.video_index,
                        "path": str(entry.path),
                        "relative_path": entry.relative_path,
                        "stage": error.stage,
                        "error": str(error),
                        "models": list(self.models_of(item.video_index)),
                    }
                )
        while builder.has_anything():
            yield builder.pop(final=True)

    def _add_item(self, builder: BatchBuilder, item: WorkItem) -> Iterator[dict[str, Any]]:
        """Decode one video or segment once for all its backbones, adding their samples and
        finally its end record."""
        entry = self.videos[item.video_index]
        models = self.models_of(item.video_index)
        # Only what the decoding library raises for a bad file is a failure of the video; an
        # error in vfe's own code (timeline, reordering, rotation, resizing) stops the run.
        bad_file = file_errors(self.decoder)
        started = time.perf_counter()
        try:
            video = open_video(entry.path, self.decoder, self.decode_device, self.decode_threads)
            fingerprint = video_fingerprint(entry.path)
        except (*bad_file, OSError) as error:
            raise _FileError("open", error) from error
        builder.add_video(
            {
                "index": item.video_index,
                "relative_path": entry.relative_path,
                "size_bytes": entry.size_bytes,
                "mtime_ns": entry.mtime_ns,
                "fingerprint": fingerprint,
                "num_segments": item.num_segments,
                "models": list(models),
            }
        )
        builder.decode_seconds += time.perf_counter() - started
        start_seconds = item.first_clip * self.clip_len
        assigner = ClipAssigner(self.clip_len, item.first_clip)
        emitters = [self._emitter(builder, name, item) for name in models]
        # Clips held by one frame across a timestamp gap go out in pieces of at most a batch.
        piece_size = min(self.batch_sizes[name] for name in models)
        frames = video.frames(start_seconds)
        num_frames, last, reached_end = 0, None, True
        bytes_origin, bytes_reported = None, 0  # progress through this item's share of the file
        while True:
            started = time.perf_counter()
            try:
                frame = next(frames, None)
            except bad_file as error:
                raise _FileError("decode", error) from error
            builder.decode_seconds += time.perf_counter() - started
            if frame is None:
                break
            if frame.time_seconds < start_seconds:  # decoded only to reach the segment
                for emitter in emitters:
                    emitter.previous = frame
                continue
            clip_index, held = assigner.add(frame.time_seconds)
            if item.end_clip is not None and clip_index >= item.end_clip:
                yield from _hold(emitters, builder, range(held.start, item.end_clip), piece_size)
                reached_end = False
                frames.close()
                break
            yield from _hold(emitters, builder, held, piece_size)
            for emitter in emitters:
                emitter.add(frame, clip_index)
            num_frames, last = num_frames + 1, frame
            if bytes_origin is None:
                bytes_origin = video.bytes_read
            progress = min(item.size_bytes, video.bytes_read - bytes_origin)
            if progress > bytes_reported:
                builder.add_decoded_bytes(progress - bytes_reported)
                bytes_reported = progress
            while builder.full():
                yield builder.pop()
        if last is None and item.first_clip == 0:
            raise _FileError("decode", ValueError("the video has no frames"))
        if video.decode_errors and not self.allow_concealed_errors:
            first = video.error_messages[0] if video.error_messages else "a frame flagged corrupt"
            raise _FileError(
                "decode",
                DecodeError(
                    f"{video.decode_errors} decode error(s) in the data, concealed by the "
                    f"decoder (first: {first}); --data.allow_concealed_errors keeps such videos"
                ),
            )
        for emitter in emitters:
            emitter.finish()
        builder.add_decoded_bytes(item.size_bytes - bytes_reported)
        video_end = None
        if reached_end and last is not None:
            video_end = {
                "num_clips": assigner.num_clips,
                "duration_seconds": last.time_seconds + last.duration_seconds,
            }
        builder.add_end(
            {
                "index": item.video_index,
                "first_clip": item.first_clip,
                "num_samples": {emitter.model: emitter.num_samples for emitter in emitters},
                "num_frames": num_frames,
                "clip_length": self.clip_len_seconds,
                "decode_errors": video.decode_errors,
                "last": video_end,
            }
        )
        while builder.full():
            yield builder.pop()

    def _emitter(self, builder: BatchBuilder, model: str, item: WorkItem) -> "_Emitter":
        spec = self.specs[model]

        def convert(frames: list[Frame]) -> torch.Tensor:
            return self.to_samples(builder, spec, frames)

        if spec.frames_per_clip is None:
            return _ImageSamples(builder, model, item.video_index, convert, self.batch_sizes[model])
        return _ClipSamples(builder, model, item.video_index, convert, spec, item.first_clip)

    def to_samples(
        self, builder: BatchBuilder, spec: InputSpec, frames: list[Frame]
    ) -> torch.Tensor:
        """Decoded frames -> `(T, C, h, w)` uint8, resized and cropped as `spec` says."""
        started = time.perf_counter()
        try:
            images = [frame.rgb() for frame in frames]
        except file_errors(self.decoder) as error:  # colour conversion of a broken frame
            raise _FileError("decode", error) from error
        converted = time.perf_counter()
        # Consecutive frames of one size are resized together; a stream may change size.
        groups: list[list[torch.Tensor]] = []
        for image in images:
            if groups and groups[-1][0].shape == image.shape:
                groups[-1].append(image)
            else:
                groups.append([image])
        samples = torch.cat(
            [
                resize_and_center_crop(
                    torch.stack(group),
                    spec.short_side_size,
                    spec.crop_size,
                    spec.interpolation,
                    spec.antialias,
                )
                for group in groups
            ]
        )
        builder.decode_seconds += converted - started
        builder.preprocess_seconds += time.perf_counter() - converted
        return samples


def _hold(
    emitters: list["_Emitter"], builder: BatchBuilder, clips: range, piece_size: int
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


class _Emitter:
    """Turns one backbone's frames into samples for the batch builder."""

    def __init__(
        self, builder: BatchBuilder, model: str, video_index: int, convert: Convert
    ) -> None:
        self.builder, self.model, self.video_index = builder, model, video_index
        self.convert = convert
        self.num_samples = 0
        self.previous: Frame | None = None  # the frame on screen: it holds empty windows
        self._converted: tuple[Frame, torch.Tensor] | None = None  # the last frame converted

    def samples_of(self, items: list["Frame | torch.Tensor"]) -> torch.Tensor:
        """`(N, C, h, w)` samples of frames (converted, each distinct frame once; the last one
        converted is remembered, so a frame held across a long gap is converted once) and of
        samples already converted."""
        rows: dict[int, torch.Tensor] = {}
        if self._converted is not None:
            rows[id(self._converted[0])] = self._converted[1]
        pending = {id(item): item for item in items if isinstance(item, Frame)}
        pending = [frame for key, frame in pending.items() if key not in rows]
        if pending:
            for frame, sample in zip(pending, self.convert(pending), strict=True):
                rows[id(frame)] = sample
            self._converted = (pending[-1], rows[id(pending[-1])])
        return torch.stack([rows[id(item)] if isinstance(item, Frame) else item for item in items])

    def hold(self, clips: range) -> None: ...

    def add(self, frame: Frame, clip_index: int) -> None: ...

    def finish(self) -> None: ...


class _ImageSamples(_Emitter):
    """Every frame of a clip is one `(C, H, W)` sample; frames are sent in chunks of the
    backbone's batch size as they arrive, so a clip is never held whole."""

    def __init__(
        self,
        builder: BatchBuilder,
        model: str,
        video_index: int,
        convert: Convert,
        chunk_size: int,
    ) -> None:
        super().__init__(builder, model, video_index, convert)
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
        pixels = self.samples_of([frame for _, frame in self._pending])
        self.builder.add_samples(self.model, pixels, self.video_index, clips)
        self.num_samples += len(clips)
        self._pending = []


class _ClipSamples(_Emitter):
    """`frames_per_clip` frames spread uniformly over a clip: one `(C, T, H, W)` sample
    (`stack_frames`) or T `(C, H, W)` samples. A clip's frames are held until the next clip
    starts, undecoded to RGB while they fit in MAX_HELD_DECODED_BYTES, at the backbone's input
    size past that (the same samples either way: each frame is resized on its own)."""

    def __init__(
        self,
        builder: BatchBuilder,
        model: str,
        video_index: int,
        convert: Convert,
        spec: InputSpec,
        first_clip: int = 0,
    ) -> None:
        super().__init__(builder, model, video_index, convert)
        self.spec = spec
        self._clip_index = first_clip
        self._items: list[Frame | torch.Tensor] = []
        self._held_bytes = 0  # decoded pictures held in `_items`
        self.max_held_bytes = 0  # the most held at once (for tests and benchmarks)

    def hold(self, clips: range) -> None:
        """Clips without a frame of their own show the previous frame."""
        if not clips:
            return
        self.finish()
        for clip_index in clips:
            self._emit(clip_index, [self.previous])

    def add(self, frame: Frame, clip_index: int) -> None:
        if clip_index != self._clip_index:
            self.finish()
            self._clip_index = clip_index
        self.previous = frame
        if self._held_bytes + frame.num_bytes > MAX_HELD_DECODED_BYTES:
            raw = [i for i, item in enumerate(self._items) if isinstance(item, Frame)]
            for start in range(0, len(raw), SPILL_FRAMES):  # few full-size frames at a time
                chunk = raw[start : start + SPILL_FRAMES]
                converted = self.samples_of([self._items[i] for i in chunk])
                for i, sample in zip(chunk, converted, strict=True):
                    self._items[i] = sample
            self._held_bytes = 0
            self._items.append(self.samples_of([frame])[0])
            return
        self._items.append(frame)
        self._held_bytes += frame.num_bytes
        self.max_held_bytes = max(self.max_held_bytes, self._held_bytes)

    def finish(self) -> None:
        if self._items:
            self._emit(self._clip_index, self._items)
            self._items, self._held_bytes = [], 0

    def _emit(self, clip_index: int, items: list["Frame | torch.Tensor"]) -> None:
        picks = uniform_indices(len(items), self.spec.frames_per_clip)
        distinct = sorted(set(picks))  # a frame picked twice is converted once
        images = self.samples_of([items[i] for i in distinct])
        row_of = {frame_index: row for row, frame_index in enumerate(distinct)}
        samples = images[[row_of[i] for i in picks]]
        if self.spec.stack_frames:
            samples = samples.permute(1, 0, 2, 3).unsqueeze(0).contiguous()
        self.builder.add_samples(self.model, samples, self.video_index, [clip_index] * len(samples))
        self.num_samples += len(samples)
