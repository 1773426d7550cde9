"""Videos -> batches of preprocessed clip samples for one or several backbones, every frame
decoded once, sequentially, inside workers.

The dataset is iterable: each DataLoader worker of a rank decodes its own list of work items
(`vfe.data.work_plan`): whole videos, or segments of whole clips of a long video, each decoded
sequentially from a keyframe before it. Frames are grouped into clips of presentation time as
they stream (`vfe.data.clip_grid`), so memory holds at most one clip. Each backbone (by name) gets
the frames its InputSpec asks for, resized its way, in batches of its own size; a batch
(`vfe.data.records.Batch`) holds those samples and records of the videos started, finished
and failed. Samples of several videos may share a batch, and a segment's end may arrive before
its last samples; the writer reassembles them per backbone and video.
"""

import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from vfe.data.batching import BatchBuilder
from vfe.data.clip_grid import ClipAssigner, clip_length_fraction, stride_phases
from vfe.data.input_spec import AudioSpec, FrameSampling, InputSpec, is_audio
from vfe.data.paths import (
    AUDIO_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VideoEntry,
    is_audio_file,
    video_fingerprint,
)
from vfe.data.recipe_samples import FilteredSamples
from vfe.data.records import (
    Batch,
    RowsOfRecipe,
    Samples,
    SegmentEnd,
    ShardEnd,
    StrideWindows,
    VideoFailure,
    VideoStart,
    VideoTail,
)
from vfe.data.samples import (
    ClipSamples,
    Destination,
    Emitter,
    ImageSamples,
    MiddleFrameSamples,
    WindowSamples,
    hold_clips,
    means_every_frame,
    uses_every_frame,
)
from vfe.data.streams import in_threads
from vfe.data.transforms import packed_to_samples, resize_and_center_crop
from vfe.data.work_plan import ShardItem, WorkItem, sample_index, split_over_workers
from vfe.decoding.audio import AudioWindows, decode_audio, read_audio_windows
from vfe.decoding.colour import packed_shape
from vfe.decoding.video import (
    DEFAULT_DECODER,
    DecodeError,
    Frame,
    StreamFacts,
    Video,
    file_errors,
    open_video,
)
from vfe.messages import say_on_this_rank
from vfe.planning.claims import Claims
from vfe.planning.shard_plan import done_marker
from vfe.sources.shards import ShardError, shard_samples


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


@dataclass
class _Grid:
    """One grid of clips being filled: the whole grid, or one phase of a stride."""

    origin_seconds: Fraction  # where its clip 0 starts
    assigner: ClipAssigner
    emitters: list[Emitter]


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
        clip_stride_seconds: start a clip every S seconds (S divides clip_len; overlapping
            clips); None: every clip_len seconds. Needs whole videos as work items.
        tail: "keep" every clip of the grid, or "round": drop a last clip whose middle is
            after the video's end (`vfe.data.clip_grid`).
        convert_on: "workers": frames leave the workers as RGB at each backbone's size;
            "model": 8-bit 4:2:0 frames leave them as decoded (packed YUV), converted and
            resized on the model's device (`vfe.data.transforms.packed_to_samples`); others
            as with "workers".
        decode_streams: in the main process only: `work` holds one list per stream, each
            decoded in its own thread (several NVDEC streams at once).
        claims: the run's claims on videos (`vfe.planning.claims`): a video another live job
            sharing the output folder decodes, or has written meanwhile, is left to it.
        sparse_decode: decode only the frames used where every backbone of a video uses a
            few frames of each clip (`vfe.decoding.sparse`).
        audio_stream: which audio stream audio backbones read (default: the first).
        audio_files: a shard sample's audio member may be its video (every backbone is an
            audio backbone).
        shard_video_ext: a shard sample's video is its member with this suffix (`.mp4`);
            default: its first member with a video suffix.
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
        clip_stride_seconds: float | None = None,
        tail: str = "keep",
        convert_on: str = "workers",
        decode_streams: int = 1,
        claims: Claims | None = None,
        sparse_decode: bool = False,
        audio_stream: int | None = None,
        audio_files: bool = False,
        shard_video_ext: str | None = None,
    ) -> None:
        self.videos = videos
        self.claims = claims
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
        self.clip_stride_seconds = clip_stride_seconds
        self.clip_stride = (
            self.clip_len
            if clip_stride_seconds is None
            else clip_length_fraction(clip_stride_seconds)
        )
        self.phases = stride_phases(self.clip_len, self.clip_stride)
        self.tail = tail
        self.convert_on = convert_on
        self.decode_streams = decode_streams
        self.sparse_decode = sparse_decode
        self.audio_stream = audio_stream
        self.audio_files = audio_files
        self.shard_video_ext = shard_video_ext

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

    def __iter__(self) -> Iterator[Batch]:
        if self.decode_streams == 1:
            yield from self._batches(self.worker_items())
            return
        if get_worker_info() is not None:
            raise RuntimeError("decode_streams > 1 runs in the main process, not in workers")
        shares = self.work
        if shares is None:
            sizes = [video.size_bytes for video in self.videos]
            shares = split_over_workers(
                list(range(len(self.videos))), sizes, self.decode_streams, self.clip_len, None, 0.0
            )
        if len(shares) != self.decode_streams:
            raise RuntimeError(
                f"work planned for {len(shares)} streams, run with {self.decode_streams}"
            )
        yield from in_threads([self._batches(share) for share in shares if share])

    def _batches(self, items: list[WorkItem]) -> Iterator[Batch]:
        """The batches of `items`, decoded one after the other."""
        builder = BatchBuilder(self.batch_sizes)
        for item in items:
            if isinstance(item, ShardItem):
                if self.claims is not None:  # as videos are: jobs sharing the folder share shards
                    models = self.claims.claim(done_marker(item.shard.name), item.models)
                    if not models:  # another job reads it, or has finished it
                        builder.add_shard_end(ShardEnd(item.number, 0, [], elsewhere=True))
                        continue
                    item = replace(item, models=models)
                yield from self._add_shard(builder, item)
                continue
            models = self.models_of(item.video_index)
            if self.claims is not None:  # claimed just before decoding, so jobs share as they go
                models = self.claims.claim(self.videos[item.video_index].relative_path, models)
                if not models:  # another job decodes it, or has written it
                    continue
            try:
                yield from self._add_item(builder, item, models)
            except _FileError as error:
                entry = self.videos[item.video_index]
                builder.add_failure(
                    VideoFailure(
                        index=item.video_index,
                        path=str(entry.path),
                        relative_path=entry.relative_path,
                        stage=error.stage,
                        error=str(error),
                        models=list(models),
                    )
                )
        while builder.has_anything():
            yield builder.pop(final=True)

    def _add_shard(self, builder: BatchBuilder, item: ShardItem) -> Iterator[Batch]:
        """A shard's samples one after the other, each decoded as a video is; a sample without
        a video (or that fails) is that sample's failure; then the shard's end record, with
        the error that stopped its reading, if one did."""
        suffixes = VIDEO_EXTENSIONS | AUDIO_EXTENSIONS if self.audio_files else VIDEO_EXTENSIONS
        if self.shard_video_ext is not None:
            suffixes = frozenset({self.shard_video_ext})
        number, error = 0, None
        samples = shard_samples(item.shard, suffixes)
        while True:
            try:
                sample = next(samples, None)
            except ShardError as problem:
                error = str(problem)
                break
            if sample is None:
                break
            index = sample_index(item.number, number)
            number += 1
            video = sample.video
            name = f"{item.shard.name}.tar/{sample.key}"
            if video is None:
                builder.add_failure(
                    VideoFailure(
                        index,
                        name,
                        sample.key,
                        "open",
                        sample.problem or "",
                        [*item.models],
                        shard=item.number,
                    )
                )
                continue
            entry = VideoEntry(video, sample.key + video.suffix.lower(), video.size_bytes, 0)
            work = WorkItem(index, size_bytes=video.size_bytes)
            try:
                yield from self._add_item(builder, work, item.models, entry, item.number)
            except _FileError as failure:
                builder.add_failure(
                    VideoFailure(
                        index, str(video), entry.relative_path, failure.stage, str(failure),
                        [*item.models], shard=item.number,
                    )
                )  # fmt: skip
        builder.add_shard_end(ShardEnd(item.number, number, [*item.models], error))

    def _add_item(
        self,
        builder: BatchBuilder,
        item: WorkItem,
        models: tuple[str, ...],
        entry: VideoEntry | None = None,
        shard: int | None = None,
    ) -> Iterator[Batch]:
        """Decode one video or segment once for `models`, adding their samples and finally its
        end record; `entry`: the video (default: the run's video `item.video_index`), a sample
        of shard number `shard`."""
        entry = entry if entry is not None else self.videos[item.video_index]
        if is_audio_file(entry.path):
            yield from self._add_audio_file(builder, item, models, entry, shard)
            return
        # Only what the decoding library raises for a bad file is a failure of the video; an
        # error in vfe's own code (timeline, reordering, rotation, resizing) stops the run.
        bad_file = file_errors(self.decoder)
        started = time.perf_counter()
        try:
            video = open_video(
                entry.path,
                self.decoder,
                self.decode_device,
                self.decode_threads,
                sparse=self.sparse_decode
                and not any(uses_every_frame(self.specs[m]) for m in models),
            )
            fingerprint = video_fingerprint(entry.path)
        except (*bad_file, OSError) as error:
            raise _FileError("open", error) from error
        builder.add_video(_video_start(item, entry, fingerprint, models, shard))
        builder.decode_seconds += time.perf_counter() - started
        if self.phases > 1 and item.num_segments > 1:
            raise ValueError("a clip stride needs whole videos as work items, not segments")
        start_seconds = item.first_clip * self.clip_len
        # One grid per phase of a stride (`vfe.data.clip_grid`); one grid without a stride.
        # Under a stride, backbones whose clip feature is the mean over every frame get one grid
        # of windows S long instead, each frame encoded once (`WindowSamples`). Audio
        # backbones take their clips' windows of audio once the grid is known.
        audio_models = [name for name in models if is_audio(self.specs[name])]
        windowed = [
            name for name in models if self.phases > 1 and means_every_frame(self.specs[name])
        ]
        grids = [
            _Grid(
                origin_seconds=phase * self.clip_stride,
                assigner=ClipAssigner(self.clip_len, item.first_clip, late_start=phase > 0),
                emitters=[
                    self._emitter(builder, name, item, phase, video)
                    for name in models
                    if name not in windowed and name not in audio_models
                ],
            )
            for phase in range(self.phases)
        ]
        window_grid = _Grid(
            origin_seconds=Fraction(0),
            assigner=ClipAssigner(self.clip_stride, item.first_clip),
            emitters=[
                WindowSamples(
                    Destination(builder, name, item.video_index),
                    _SampleConverter(self, builder, self.specs[name]),
                    self.batch_sizes[name],
                )
                for name in windowed
            ],
        )
        # The phase grids count the clips (the window grid's emitters only, if any, use it).
        fed = [*grids, window_grid] if windowed else grids
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
            for grid in fed:
                grid_seconds = frame.time_seconds - grid.origin_seconds
                if grid_seconds < start_seconds:  # before this grid's (or segment's) start
                    for emitter in grid.emitters:
                        emitter.previous = frame
                    continue
                clip_index, held = grid.assigner.add(grid_seconds)
                if item.end_clip is not None and clip_index >= item.end_clip:
                    yield from hold_clips(
                        grid.emitters, builder, range(held.start, item.end_clip), piece_size
                    )
                    reached_end = False
                    frames.close()
                    break
                yield from hold_clips(grid.emitters, builder, held, piece_size)
                for emitter in grid.emitters:
                    emitter.add(frame, clip_index)
            if not reached_end:
                break
            if frame.time_seconds < start_seconds:  # decoded only to reach the segment
                continue
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
        num_samples = dict.fromkeys(models, 0)
        recipe_rows = {}
        for grid in fed:  # the last clips' frames are decoded now, where decoding is sparse
            for emitter in grid.emitters:
                emitter.finish()
                num_samples[emitter.model] += emitter.num_samples
                if isinstance(emitter, FilteredSamples):
                    recipe_rows[emitter.model] = RowsOfRecipe(emitter.rows, emitter.row_seconds)
        audio_seconds = None
        if audio_models and last is not None:
            end_clip = item.end_clip
            if reached_end:
                end_clip = sum(grid.assigner.num_clips for grid in grids)
            audio_seconds = self._add_audio(
                builder, item, entry, video, audio_models, end_clip, shard
            )
            for name in audio_models:
                if audio_seconds is None:  # a failure of these backbones only
                    del num_samples[name]
                else:
                    num_samples[name] = end_clip - item.first_clip
        if video.decode_errors and not self.allow_concealed_errors:
            raise _FileError(
                "decode",
                DecodeError(
                    f"{video.decode_errors} frame(s) decoded with errors in the data, concealed "
                    "by the decoder (damaged file); --data.allow_concealed_errors keeps such "
                    "videos"
                ),
            )
        if self.decode_device != "cpu" and num_frames and video.hardware_frames == 0:
            why = getattr(video, "software_reason", None) or "NVDEC cannot decode its stream"
            say_on_this_rank(
                f"{entry.relative_path}: {why}; FFmpeg's software decoder did "
                "(its provenance records nvdec_frames: 0)"
            )
        stride_windows = {
            emitter.model: StrideWindows(self.phases, emitter.held)
            for emitter in window_grid.emitters
        }
        builder.add_decoded_bytes(item.size_bytes - bytes_reported)
        tail = None
        if reached_end and last is not None:
            num_clips = sum(grid.assigner.num_clips for grid in grids)
            tail = VideoTail(num_clips, last.time_seconds + last.duration_seconds)
        builder.add_end(
            SegmentEnd(
                index=item.video_index,
                first_clip=item.first_clip,
                num_samples=num_samples,
                num_frames=num_frames,
                clip_length=self.clip_len_seconds,
                decode_errors=video.decode_errors,
                nvdec_frames=None if self.decode_device == "cpu" else video.hardware_frames,
                decode=video.decode_mode,
                last=tail,
                clip_stride=self.clip_stride_seconds,
                tail=self.tail,
                recipe_rows=recipe_rows,
                audio_seconds=audio_seconds,
                stride_windows=stride_windows,
            )
        )
        while builder.full():
            yield builder.pop()

    def _add_audio(
        self,
        builder: BatchBuilder,
        item: WorkItem,
        entry: VideoEntry,
        video: Video,
        audio_models: list[str],
        end_clip: int,
        shard: int | None,
    ) -> float | None:
        """Each audio backbone's windows of the item's clips `[first_clip, end_clip)`, one
        sample per clip; the seconds of audio the file has, or None where it has none to give
        (a failure of the audio backbones only: the video backbones still write theirs)."""
        clips = list(range(item.first_clip, end_clip))
        starts = [clip * self.clip_stride for clip in clips]
        started = time.perf_counter()
        audio_seconds = None
        read: dict[tuple[int, str], AudioWindows] = {}  # backbones of one rate share a read
        for name in audio_models:
            spec: AudioSpec = self.specs[name]
            key = (spec.sample_rate_hz, spec.resampler)
            try:
                if key not in read:
                    read[key] = read_audio_windows(
                        entry.path,
                        spec.sample_rate_hz,
                        video.first_frame_seconds,
                        starts,
                        self.clip_len,
                        self.audio_stream,
                        spec.resampler,
                    )
            except file_errors(self.decoder) as error:
                builder.add_failure(
                    VideoFailure(
                        index=item.video_index,
                        path=str(entry.path),
                        relative_path=entry.relative_path,
                        stage="audio",
                        error=describe_error(error),
                        models=list(audio_models),
                        shard=shard,
                    )
                )
                return None
            audio_seconds = read[key].audio_seconds
            self._add_windows(builder, name, item.video_index, read[key].samples, clips)
        builder.decode_seconds += time.perf_counter() - started
        return audio_seconds

    def _add_windows(
        self,
        builder: BatchBuilder,
        name: str,
        video_index: int,
        windows: np.ndarray,
        clips: list[int],
    ) -> None:
        """An audio backbone's windows `(len(clips), window_samples)`, one sample per clip."""
        for start in range(0, len(clips), self.batch_sizes[name]):
            chunk = slice(start, start + self.batch_sizes[name])
            pixels = torch.from_numpy(windows[chunk])
            builder.add_samples(name, Samples(pixels, None), video_index, clips[chunk])

    def _add_audio_file(
        self,
        builder: BatchBuilder,
        item: WorkItem,
        models: tuple[str, ...],
        entry: VideoEntry,
        shard: int | None,
    ) -> Iterator[Batch]:
        """An audio file (`vfe.data.paths.AUDIO_EXTENSIONS`) for audio backbones: only its
        audio is decoded; time 0 is its first sample and the clips cover its samples, with the
        tail rules of a video's grid."""
        pictured = [name for name in models if not is_audio(self.specs[name])]
        if pictured:
            raise _FileError(
                "open",
                DecodeError(f"an audio file has no pictures for {', '.join(pictured)}"),
            )
        if item.num_segments > 1 or item.first_clip:
            raise ValueError("an audio file is decoded whole, not in segments")
        started = time.perf_counter()
        tracks = {}  # backbones of one rate and resampler share a decode
        try:
            fingerprint = video_fingerprint(entry.path)
            for name in models:
                spec: AudioSpec = self.specs[name]
                key = (spec.sample_rate_hz, spec.resampler)
                if key not in tracks:
                    tracks[key] = decode_audio(
                        entry.path,
                        spec.sample_rate_hz,
                        stream_index=self.audio_stream,
                        resampler=spec.resampler,
                    )
        except (*file_errors("pyav"), OSError) as error:
            raise _FileError("audio", error) from error
        track = next(iter(tracks.values()))
        duration = track.decoded_seconds  # at the file's own rate: the same for every backbone
        if duration == 0:
            raise _FileError("audio", DecodeError("the audio stream has no samples"))
        num_clips = math.ceil(duration / self.clip_stride)  # clip i starts at i*S < duration
        clips = list(range(num_clips))
        starts = [clip * self.clip_stride for clip in clips]
        builder.add_video(_video_start(item, entry, fingerprint, models, shard))
        for name in models:
            spec = self.specs[name]
            windows = tracks[spec.sample_rate_hz, spec.resampler].windows(starts, self.clip_len)
            self._add_windows(builder, name, item.video_index, windows, clips)
        builder.decode_seconds += time.perf_counter() - started
        builder.add_decoded_bytes(item.size_bytes)
        builder.add_end(
            SegmentEnd(
                index=item.video_index,
                first_clip=0,
                num_samples=dict.fromkeys(models, num_clips),
                num_frames=0,
                clip_length=self.clip_len_seconds,
                decode_errors=0,
                nvdec_frames=None,
                decode="sequential",
                last=VideoTail(num_clips, duration),
                clip_stride=self.clip_stride_seconds,
                tail=self.tail,
                recipe_rows={},
                audio_seconds=track.audio_seconds,
                stride_windows={},
            )
        )
        while builder.full():
            yield builder.pop()

    def _emitter(
        self, builder: BatchBuilder, model: str, item: WorkItem, phase: int, video: Video
    ) -> Emitter:
        spec = self.specs[model]
        convert = _SampleConverter(self, builder, spec)
        destination = Destination(builder, model, item.video_index, self.phases, phase)
        recipe = spec.ffmpeg_recipe
        if recipe is not None:
            facts: StreamFacts = video.facts  # a recipe runs only with pyav (the datamodule)
            if recipe.clip_span_frames is not None and facts.average_rate_hz is None:
                raise _FileError(
                    "open",
                    DecodeError(
                        f"the stream declares no average frame rate, which the {recipe.name} "
                        "recipe samples each clip by"
                    ),
                )
            return FilteredSamples(destination, spec, self.clip_len, facts)
        if spec.frames_per_clip is None:
            return ImageSamples(destination, convert, self.batch_sizes[model])
        if spec.frame_sampling is FrameSampling.MIDDLE:
            return MiddleFrameSamples(destination, convert, self.clip_len)
        return ClipSamples(destination, convert, spec, item.first_clip)

    def packed_samples(self, builder: BatchBuilder, frames: list[Frame]) -> Samples | None:
        """Frames as decoded pictures for the model's device, if all pack to one layout."""
        started = time.perf_counter()
        for frame in frames:  # all of them at once, for a sparse decode
            frame.want()
        try:
            pictures = [frame.packed() for frame in frames]
        except file_errors(self.decoder) as error:  # a picture decoded now (sparse decoding)
            raise _FileError("decode", error) from error
        kinds = {
            None if picture is None else (picture.layout, picture.device) for picture in pictures
        }
        if None in kinds or len(kinds) != 1:
            return None
        layout, device = kinds.pop()
        shape = (len(pictures), 1, *packed_shape(layout.height, layout.width))
        packed = torch.empty(shape, dtype=torch.uint8, device=device)
        writes = [(picture, packed[row, 0]) for row, picture in enumerate(pictures)]
        if device.type == "cpu":
            for picture, target in writes:
                picture.write(target)
        else:  # on the GPU: read once the decoder is done, once per batch (not per clip)
            builder.defer_reads(device, writes)
        builder.decode_seconds += time.perf_counter() - started
        return Samples(packed, layout)

    def to_samples(
        self, builder: BatchBuilder, spec: InputSpec, frames: list[Frame]
    ) -> torch.Tensor:
        """Decoded frames -> `(T, C, h, w)` uint8, resized and cropped as `spec` says."""
        started = time.perf_counter()
        for frame in frames:  # all of them at once, for a sparse decode
            frame.want()
        try:
            images = [frame.rgb() for frame in frames]
        except file_errors(self.decoder) as error:  # colour conversion of a broken frame
            raise _FileError("decode", error) from error
        converted = time.perf_counter()
        # Each frame is resized on its own: stacking full-resolution frames into one batch first
        # was a pure copy that cost as much as the resize (1.4 ms of 2.9 ms a 720p frame for
        # CLIP's resize, one core); the pixels are the same. A stream may also change size.
        samples = torch.cat([resize_and_center_crop(image[None], spec) for image in images])
        builder.decode_seconds += converted - started
        builder.preprocess_seconds += time.perf_counter() - converted
        return samples


def _video_start(
    item: WorkItem,
    entry: VideoEntry,
    fingerprint: str,
    models: tuple[str, ...],
    shard: int | None,
) -> VideoStart:
    """The record of a video (or segment) whose decoding starts."""
    return VideoStart(
        index=item.video_index,
        relative_path=entry.relative_path,
        size_bytes=entry.size_bytes,
        mtime_ns=entry.mtime_ns,
        fingerprint=fingerprint,
        num_segments=item.num_segments,
        models=list(models),
        rank_segments=item.rank_segments,
        num_ranks=item.num_ranks,
        shard=shard,
    )


class _SampleConverter:
    """One backbone's `Converter` (`vfe.data.samples`) for one video."""

    def __init__(self, dataset: VideoClipDataset, builder: BatchBuilder, spec: InputSpec) -> None:
        self.dataset, self.builder, self.spec = dataset, builder, spec
        self.packs = dataset.convert_on == "model"

    def __call__(self, frames: list[Frame], packed: bool) -> Samples:
        if packed:
            samples = self.dataset.packed_samples(self.builder, frames)
            if samples is not None:
                return samples
        return Samples(self.dataset.to_samples(self.builder, self.spec, frames), None)

    def unpacked(self, samples: Samples) -> Samples:
        self.builder.read_deferred()  # the pictures must be there before they are converted
        started = time.perf_counter()
        pixels = packed_to_samples(samples.pixels, samples.layout, self.spec)
        self.builder.preprocess_seconds += time.perf_counter() - started
        return Samples(pixels, None)
