"""Videos -> batches of preprocessed clip samples, decoded once, sequentially, inside workers.

The dataset is iterable: each (rank, worker) pair owns a disjoint set of whole videos, so every
video is decoded and written by exactly one process. Each video is decoded in one pass in
presentation order and its frames are grouped into clips of presentation time as they stream
(`vfe.clip_grid`), so memory holds at most one clip. A batch is a dict:

    pixels:      (B, C, H, W) or (B, C, T, H, W) uint8 samples, as the backbone's InputSpec says
    video_index: list[int] (B), index into the run's video list (lists, not tensors: they stay
                 on the host when Lightning moves the batch to the model's device)
    clip_index:  list[int] (B)
    videos:      list[dict] videos whose decoding started: index, relative_path, size_bytes,
                 mtime_ns
    ends:        list[dict] videos fully decoded: index, num_samples, num_clips, num_frames, fps,
                 clip_length, timestamps ((num_clips, 2) float64 clip windows in seconds)
    failures:    list[dict] videos that could not be decoded: index, path, stage, error
    decode_seconds, preprocess_seconds: worker time spent on this batch's samples (for benchmarks)

Samples of several videos may share a batch, and a video's end may arrive before its last
samples; the writer reassembles them per video.
"""

import heapq
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from vfe.backbones.base import InputSpec
from vfe.clip_grid import ClipAssigner, clip_length_fraction, clip_windows, uniform_indices
from vfe.paths import VideoEntry
from vfe.transforms import resize_and_center_crop
from vfe.video import DEFAULT_DECODER, Frame, open_video


def assign_shards(sizes: list[int], num_shards: int) -> list[list[int]]:
    """Split item indices into `num_shards` lists of near-equal total size.

    Largest first, each to the currently lightest shard (LPT), so shards finish together.
    Deterministic: every rank computes the same split.
    """
    shards: list[list[int]] = [[] for _ in range(num_shards)]
    heap = [(0, shard) for shard in range(num_shards)]
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        load, shard = heapq.heappop(heap)
        shards[shard].append(index)
        heapq.heappush(heap, (load + sizes[index], shard))
    return shards


def describe_error(error: BaseException, max_chars: int = 300) -> str:
    """`Type: first line of the message`, without decord's `[time] /source/path:line:` prefixes."""
    lines = str(error).strip().splitlines() or [""]
    message = re.sub(r"(\[[\d:]+\] \S+:\d+: )+", "", lines[0]).strip()
    return f"{type(error).__name__}: {message}"[:max_chars]


class _BatchBuilder:
    """Collects samples and cuts them into batches of `batch_size` (the last may be short)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self._chunks: list[torch.Tensor] = []
        self._video_index: list[int] = []
        self._clip_index: list[int] = []
        self._videos: list[dict[str, Any]] = []
        self._ends: list[dict[str, Any]] = []
        self._failures: list[dict[str, Any]] = []
        self.decode_seconds = 0.0
        self.preprocess_seconds = 0.0

    @property
    def num_samples(self) -> int:
        return len(self._clip_index)

    def add_samples(self, pixels: torch.Tensor, video_index: int, clip_index: list[int]) -> None:
        """`pixels (N, ...)` samples of one video, sample n belonging to `clip_index[n]`."""
        self._chunks.append(pixels)
        self._video_index += [video_index] * len(clip_index)
        self._clip_index += clip_index

    def add_video(self, info: dict[str, Any]) -> None:
        self._videos.append(info)

    def add_end(self, end: dict[str, Any]) -> None:
        self._ends.append(end)

    def add_failure(self, failure: dict[str, Any]) -> None:
        self._failures.append(failure)

    def has_anything(self) -> bool:
        return bool(self.num_samples or self._videos or self._ends or self._failures)

    def pop(self) -> dict[str, Any]:
        """The next batch: up to `batch_size` samples, plus all pending records."""
        take = min(self.batch_size, self.num_samples)
        if self._chunks:
            pixels = self._chunks[0] if len(self._chunks) == 1 else torch.cat(self._chunks)
        else:
            pixels = torch.empty(0, dtype=torch.uint8)
        self._chunks = [pixels[take:]] if take < len(pixels) else []
        batch = {
            "pixels": pixels[:take],
            "video_index": self._video_index[:take],
            "clip_index": self._clip_index[:take],
            "videos": self._videos,
            "ends": self._ends,
            "failures": self._failures,
            "decode_seconds": self.decode_seconds,
            "preprocess_seconds": self.preprocess_seconds,
        }
        del self._video_index[:take], self._clip_index[:take]
        self._videos, self._ends, self._failures = [], [], []
        self.decode_seconds = self.preprocess_seconds = 0.0
        return batch


class _FileError(Exception):
    """A decoding library failed on the file itself; `stage` says where."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(describe_error(error))
        self.stage = stage


class VideoClipDataset(IterableDataset):
    """Yields ready batches (the DataLoader runs with `batch_size=None`); see the module doc."""

    def __init__(
        self,
        videos: list[VideoEntry],
        spec: InputSpec,
        clip_len_seconds: float,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        decoder: str = DEFAULT_DECODER,
        decode_device: str = "cpu",
        decode_threads: int = 1,
    ) -> None:
        self.videos = videos
        self.spec = spec
        self.clip_len_seconds = clip_len_seconds
        self.clip_len = clip_length_fraction(clip_len_seconds)
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.decoder = decoder
        self.decode_device = decode_device
        self.decode_threads = decode_threads

    def shard_indices(self) -> list[int]:
        """Video indices for this (rank, DataLoader worker); all shards together cover each once."""
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        shards = assign_shards([v.size_bytes for v in self.videos], self.world_size * num_workers)
        return shards[self.rank * num_workers + worker_id]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        builder = _BatchBuilder(self.batch_size)
        for video_index in self.shard_indices():
            try:
                yield from self._add_video(builder, video_index)
            except _FileError as error:
                entry = self.videos[video_index]
                builder.add_failure(
                    {
                        "index": video_index,
                        "path": str(entry.path),
                        "relative_path": entry.relative_path,
                        "stage": error.stage,
                        "error": str(error),
                    }
                )
        while builder.has_anything():
            yield builder.pop()

    def _add_video(self, builder: _BatchBuilder, video_index: int) -> Iterator[dict[str, Any]]:
        """Decode one video, adding its samples and finally its end record to `builder`."""
        entry = self.videos[video_index]
        started = time.perf_counter()
        # Decoders raise many exception types for broken files (av.error.*, DECORDError,
        # RuntimeError, OSError, ...); only the library calls are guarded, so a bug in vfe
        # itself still stops the run.
        try:
            video = open_video(entry.path, self.decoder, self.decode_device, self.decode_threads)
        except Exception as error:
            raise _FileError("open", error) from error
        builder.add_video(
            {
                "index": video_index,
                "relative_path": entry.relative_path,
                "size_bytes": entry.size_bytes,
                "mtime_ns": entry.mtime_ns,
            }
        )
        builder.decode_seconds += time.perf_counter() - started
        assigner = ClipAssigner(self.clip_len)
        emitter = _ImageSamples(self, builder, video_index)
        if self.spec.frames_per_clip is not None:
            emitter = _ClipSamples(self, builder, video_index)
        frames = video.frames()
        num_frames, last = 0, None
        while True:
            started = time.perf_counter()
            try:
                frame = next(frames, None)
            except Exception as error:
                raise _FileError("decode", error) from error
            builder.decode_seconds += time.perf_counter() - started
            if frame is None:
                break
            num_frames, last = num_frames + 1, frame
            clip_index, held = assigner.add(frame.time_seconds)
            emitter.add(frame, clip_index, held)
            while builder.num_samples >= self.batch_size:
                yield builder.pop()
        if last is None:
            raise _FileError("decode", ValueError("the video has no frames"))
        emitter.finish()
        duration = last.time_seconds + last.duration_seconds
        builder.add_end(
            {
                "index": video_index,
                "num_samples": emitter.num_samples,
                "num_clips": assigner.num_clips,
                "num_frames": num_frames,
                "fps": float(num_frames / duration) if duration else math.nan,
                "clip_length": self.clip_len_seconds,
                # A list, not an array: the DataLoader would make an array a tensor, and
                # Lightning would move it to the model's device.
                "timestamps": clip_windows(assigner.num_clips, self.clip_len, duration).tolist(),
            }
        )
        while builder.num_samples >= self.batch_size:
            yield builder.pop()

    def to_samples(self, builder: _BatchBuilder, frames: list[Frame]) -> torch.Tensor:
        """Decoded frames -> `(T, C, h, w)` uint8, resized and cropped as the spec says."""
        started = time.perf_counter()
        try:
            images = [frame.rgb() for frame in frames]
        except Exception as error:  # colour conversion of a broken frame
            raise _FileError("decode", error) from error
        converted = time.perf_counter()
        spec = self.spec
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


class _ImageSamples:
    """Every frame of a clip is one `(C, H, W)` sample; frames are sent in chunks of batch_size
    as they arrive, so a clip is never held whole."""

    def __init__(self, dataset: VideoClipDataset, builder: _BatchBuilder, video_index: int):
        self.dataset, self.builder, self.video_index = dataset, builder, video_index
        self.num_samples = 0
        self._pending: list[tuple[int, Frame]] = []
        self._previous: Frame | None = None

    def add(self, frame: Frame, clip_index: int, held: range) -> None:
        self._pending += [(held_clip, self._previous) for held_clip in held]
        self._pending.append((clip_index, frame))
        self._previous = frame
        if len(self._pending) >= self.dataset.batch_size:
            self.finish()

    def finish(self) -> None:
        if not self._pending:
            return
        clips = [clip_index for clip_index, _ in self._pending]
        pixels = self.dataset.to_samples(self.builder, [frame for _, frame in self._pending])
        self.builder.add_samples(pixels, self.video_index, clips)
        self.num_samples += len(clips)
        self._pending = []


class _ClipSamples:
    """`frames_per_clip` frames spread uniformly over a clip form one `(C, T, H, W)` sample; a
    clip's frames are held (undecoded to RGB) until the next clip starts."""

    def __init__(self, dataset: VideoClipDataset, builder: _BatchBuilder, video_index: int):
        self.dataset, self.builder, self.video_index = dataset, builder, video_index
        self.num_samples = 0
        self._clip_index = 0
        self._frames: list[Frame] = []

    def add(self, frame: Frame, clip_index: int, held: range) -> None:
        if clip_index != self._clip_index:
            previous = self._frames[-1]
            self._emit(self._clip_index, self._frames)
            for held_clip in held:
                self._emit(held_clip, [previous])
            self._clip_index, self._frames = clip_index, []
        self._frames.append(frame)

    def finish(self) -> None:
        self._emit(self._clip_index, self._frames)
        self._frames = []

    def _emit(self, clip_index: int, frames: list[Frame]) -> None:
        picks = uniform_indices(len(frames), self.dataset.spec.frames_per_clip)
        distinct = sorted(set(picks))  # a frame picked twice is converted once
        images = self.dataset.to_samples(self.builder, [frames[i] for i in distinct])
        row_of = {frame_index: row for row, frame_index in enumerate(distinct)}
        rows = [row_of[i] for i in picks]
        sample = images[rows].permute(1, 0, 2, 3).unsqueeze(0).contiguous()
        self.builder.add_samples(sample, self.video_index, [clip_index])
        self.num_samples += 1
