"""Videos -> batches of preprocessed clip samples, decoded clip by clip inside DataLoader workers.

The dataset is iterable: each (rank, worker) pair owns a disjoint set of whole videos, so every
video is decoded and written by exactly one process. A batch is a dict:

    pixels:      (B, C, H, W) or (B, C, T, H, W) uint8 samples, as the backbone's InputSpec says
    video_index: list[int] (B), index into the run's video list
    clip_index:  list[int] (B)
    start_seconds, end_seconds: list[float] (B), presentation start of each sample's first
                 frame and end of its last frame (a clip spans its samples' min start, max end)
    videos:      list[dict] describing videos whose samples start in this batch (see `_video_info`)
    failures:    list[dict] videos that could not be decoded: index, path, stage, error
    decode_seconds, preprocess_seconds: worker time spent on this batch's samples (for benchmarks)

Samples of several videos may share a batch; the writer reassembles them per video.
"""

import heapq
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vfe.backbones.base import InputSpec
from vfe.clip_grid import clip_frame_ranges, uniform_frame_indices
from vfe.errors import VfeError
from vfe.paths import VideoEntry, find_videos, output_path_for, resolve_output_dir
from vfe.transforms import resize_and_center_crop
from vfe.video import check_decoder, open_video


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
        # Per sample: (video_index, clip_index, start_seconds, end_seconds).
        self._sample_info: list[tuple[int, int, float, float]] = []
        self._videos: list[dict[str, Any]] = []
        self._failures: list[dict[str, Any]] = []
        self.decode_seconds = 0.0
        self.preprocess_seconds = 0.0

    @property
    def num_samples(self) -> int:
        return len(self._sample_info)

    def add_samples(
        self,
        pixels: torch.Tensor,
        video_index: int,
        clip_index: int,
        start_seconds: list[float],
        end_seconds: list[float],
    ) -> None:
        """`pixels (N, ...)` samples of one clip, with each sample's time span in seconds."""
        self._chunks.append(pixels)
        self._sample_info += [
            (video_index, clip_index, start, end)
            for start, end in zip(start_seconds, end_seconds, strict=True)
        ]

    def add_video(self, info: dict[str, Any]) -> None:
        self._videos.append(info)

    def add_failure(self, failure: dict[str, Any]) -> None:
        self._failures.append(failure)

    def has_anything(self) -> bool:
        return bool(self.num_samples or self._videos or self._failures)

    def pop(self) -> dict[str, Any]:
        """The next batch: up to `batch_size` samples, plus all pending video infos and failures."""
        take = min(self.batch_size, self.num_samples)
        if self._chunks:
            pixels = self._chunks[0] if len(self._chunks) == 1 else torch.cat(self._chunks)
        else:
            pixels = torch.empty(0, dtype=torch.uint8)
        self._chunks = [pixels[take:]] if take < len(pixels) else []
        taken, self._sample_info = self._sample_info[:take], self._sample_info[take:]
        batch = {
            "pixels": pixels[:take],
            "video_index": [info[0] for info in taken],
            "clip_index": [info[1] for info in taken],
            "start_seconds": [info[2] for info in taken],
            "end_seconds": [info[3] for info in taken],
            "videos": self._videos,
            "failures": self._failures,
            "decode_seconds": self.decode_seconds,
            "preprocess_seconds": self.preprocess_seconds,
        }
        self._videos, self._failures = [], []
        self.decode_seconds = self.preprocess_seconds = 0.0
        return batch


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
        decoder: str = "decord",
        decode_device: str = "cpu",
    ) -> None:
        self.videos = videos
        self.spec = spec
        self.clip_len_seconds = clip_len_seconds
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.decoder = decoder
        self.decode_device = decode_device

    def shard_indices(self) -> list[int]:
        """Video indices for this (rank, DataLoader worker); all shards together cover each once."""
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        shards = assign_shards([v.size_bytes for v in self.videos], self.world_size * num_workers)
        return shards[self.rank * num_workers + worker_id]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        builder = _BatchBuilder(self.batch_size)
        for video_index in self.shard_indices():
            yield from self._add_video(builder, video_index)
        while builder.has_anything():
            yield builder.pop()

    def _add_video(self, builder: _BatchBuilder, video_index: int) -> Iterator[dict[str, Any]]:
        entry = self.videos[video_index]
        stage = "open"
        # Decoders raise many exception types for broken files (DECORDError, RuntimeError,
        # OSError, ...); any of them fails this video only, never the run.
        try:
            video = open_video(entry.path, self.decoder, self.decode_device)
            if video.num_frames < 1:
                raise ValueError("the video has no frames")
            clips = clip_frame_ranges(video.num_frames, video.average_fps, self.clip_len_seconds)
            builder.add_video(self._video_info(video_index, entry, video, clips))
            stage = "decode"
            for clip_index, (start, stop) in enumerate(clips):
                for frame_indices in self._sample_frame_indices(start, stop):
                    started = time.perf_counter()
                    decoded = video.get_frames(frame_indices)
                    decoded_at = time.perf_counter()
                    samples = self._to_samples(decoded.frames)
                    builder.decode_seconds += decoded_at - started
                    builder.preprocess_seconds += time.perf_counter() - decoded_at
                    if self.spec.frames_per_clip is None:  # one sample per frame
                        starts, ends = decoded.start_seconds, decoded.end_seconds
                    else:  # one sample per clip: its first and last frame
                        starts, ends = decoded.start_seconds[:1], decoded.end_seconds[-1:]
                    builder.add_samples(
                        samples, video_index, clip_index, starts.tolist(), ends.tolist()
                    )
                    while builder.num_samples >= self.batch_size:
                        yield builder.pop()
        except Exception as error:
            builder.add_failure(
                {
                    "index": video_index,
                    "path": str(entry.path),
                    "relative_path": entry.relative_path,
                    "stage": stage,
                    "error": describe_error(error),
                }
            )

    def _sample_frame_indices(self, start: int, stop: int) -> Iterator[list[int]]:
        """Frame index lists to decode for one clip, in chunks that bound memory."""
        if self.spec.frames_per_clip is None:
            for chunk_start in range(start, stop, self.batch_size):
                yield list(range(chunk_start, min(chunk_start + self.batch_size, stop)))
        else:
            yield uniform_frame_indices(start, stop, self.spec.frames_per_clip)

    def _to_samples(self, frames: torch.Tensor) -> torch.Tensor:
        """`(T, H, W, C)` decoded frames -> `(T, C, h, w)` image samples or `(1, C, T, h, w)`."""
        spec = self.spec
        images = resize_and_center_crop(
            frames, spec.short_side_size, spec.crop_size, spec.interpolation, spec.antialias
        )
        if spec.frames_per_clip is None:
            return images
        return images.permute(1, 0, 2, 3).unsqueeze(0).contiguous()

    def _video_info(
        self, video_index: int, entry: VideoEntry, video: Any, clips: list[tuple[int, int]]
    ) -> dict[str, Any]:
        if self.spec.frames_per_clip is None:
            samples_per_clip = [stop - start for start, stop in clips]
        else:
            samples_per_clip = [1] * len(clips)
        return {
            "index": video_index,
            "relative_path": entry.relative_path,
            "num_clips": len(clips),
            "samples_per_clip": samples_per_clip,
            "fps": video.average_fps,
            "clip_length": self.clip_len_seconds,
        }


WORKER_NICENESS = 10


def _lower_worker_priority(worker_id: int) -> None:
    """Where workers and the model share cores, decoding (the smaller share of the work) should
    fill the cycles the model leaves idle rather than preempt the model's threads."""
    os.nice(WORKER_NICENESS)


class VideoDataModule(LightningDataModule):
    """Finds the videos to do and feeds their clips, preprocessed as the model's InputSpec says.

    Args:
        input_dir: folder searched recursively for videos.
        output_dir: where .npz files go (default `features/<model name>/`); videos whose .npz
            exists are skipped unless `overwrite`.
        clip_len: clip length in seconds.
        batch_size: samples per forward pass (frames for image models, clips for video models);
            default: the model's own.
        num_workers: DataLoader worker processes that decode and resize.
        overwrite: redo videos whose .npz already exists.
        decoder: video decoding library: decord (CPU) or torchcodec (CPU or CUDA; needs FFmpeg).
        decode_device: cpu, or cuda to decode with NVDEC on the model's GPU (torchcodec only;
            decoding then runs in the main process, so num_workers must be 0).
    """

    def __init__(
        self,
        input_dir: Path = Path("raw_videos"),
        output_dir: Path | None = None,
        clip_len: float = 2.0,
        batch_size: int | None = None,
        num_workers: int = 2,
        overwrite: bool = False,
        decoder: str = "decord",
        decode_device: str = "cpu",
    ) -> None:
        super().__init__()
        if not (math.isfinite(clip_len) and clip_len > 0):
            raise VfeError(f"--clip_len must be a positive number of seconds, got {clip_len}")
        if batch_size is not None and batch_size < 1:
            raise VfeError(f"--batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise VfeError(f"--data.num_workers must be 0 or more, got {num_workers}")
        check_decoder(decoder, decode_device)
        if decode_device == "cuda" and num_workers != 0:
            raise VfeError(
                "--data.decode_device cuda decodes in the main process (CUDA cannot run in "
                f"forked DataLoader workers): set --data.num_workers 0, not {num_workers}"
            )
        if not Path(input_dir).is_dir():
            raise VfeError(f"--input_dir {str(input_dir)!r} is not a folder")
        self.input_dir = Path(input_dir)
        self.output_dir = output_dir
        self.clip_len = clip_len
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.overwrite = overwrite
        self.decoder = decoder
        self.decode_device = decode_device
        self.videos: list[VideoEntry] = []
        self.num_skipped = 0

    def setup(self, stage: str) -> None:
        model = self.trainer.lightning_module
        output_dir = resolve_output_dir(self.output_dir, model.name)
        # Listed on rank 0 and broadcast: ranks that list at different moments could see
        # different finished files and disagree on the shards.
        listing = None
        if self.trainer.global_rank == 0:
            found = find_videos(self.input_dir)
            todo = [
                entry
                for entry in found
                if self.overwrite or not output_path_for(output_dir, entry.relative_path).exists()
            ]
            listing = (todo, len(found) - len(todo))
        self.videos, self.num_skipped = self.trainer.strategy.broadcast(listing, src=0)
        rank_zero_info(
            f"vfe: {len(self.videos) + self.num_skipped} videos under {self.input_dir}, "
            f"{self.num_skipped} already done (skipped), {len(self.videos)} to extract "
            f"-> {output_dir}"
        )

    def num_videos_for_rank(self, rank: int) -> int:
        """How many of the listed videos the given rank decodes (for progress display)."""
        workers = max(1, self.num_workers)
        sizes = [video.size_bytes for video in self.videos]
        shards = assign_shards(sizes, self.trainer.world_size * workers)
        return sum(len(shard) for shard in shards[rank * workers : (rank + 1) * workers])

    def predict_dataloader(self) -> DataLoader:
        spec: InputSpec = self.trainer.lightning_module.input_spec
        root_device = self.trainer.strategy.root_device
        decode_device = "cpu"
        if self.decode_device == "cuda":
            if root_device.type != "cuda":
                raise VfeError(
                    f"--data.decode_device cuda decodes on the model's GPU, but the model runs on "
                    f"{root_device}; use --device cuda or --data.decode_device cpu"
                )
            decode_device = str(root_device)
        dataset = VideoClipDataset(
            self.videos,
            spec,
            clip_len_seconds=self.clip_len,
            batch_size=self.batch_size or spec.default_batch_size,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
            decoder=self.decoder,
            decode_device=decode_device,
        )
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=root_device.type == "cuda" and decode_device == "cpu",
            worker_init_fn=_lower_worker_priority,
        )
