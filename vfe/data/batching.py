"""Cutting samples into batches: one buffer per backbone, each with its own batch size, and
the records (video starts, ends, failures) that travel with the next batch (`vfe.data.dataset`
describes the batch)."""

from collections import deque

import torch

from vfe.data.records import (
    Batch,
    ModelSamples,
    Samples,
    SegmentEnd,
    ShardEnd,
    VideoFailure,
    VideoStart,
)
from vfe.decoding.colour import FrameLayout
from vfe.decoding.video import PackedPicture, ready_to_read


class _SampleBuffer:
    """One backbone's samples waiting for a batch."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.chunks: deque[Samples] = deque()
        self.video_index: list[int] = []
        self.clip_index: list[int] = []

    def __len__(self) -> int:
        return len(self.clip_index)

    def take(self) -> ModelSamples:
        """Up to `batch_size` samples, oldest first: one tensor where all are at the
        backbone's size, else runs of one layout each."""
        count = min(self.batch_size, len(self))
        runs: list[tuple[FrameLayout | None, list[torch.Tensor]]] = []
        remaining = count
        while remaining:
            chunk = self.chunks.popleft()
            if len(chunk.pixels) > remaining:
                self.chunks.appendleft(Samples(chunk.pixels[remaining:], chunk.layout))
                chunk = Samples(chunk.pixels[:remaining], chunk.layout)
            remaining -= len(chunk.pixels)
            if runs and runs[-1][0] == chunk.layout:
                runs[-1][1].append(chunk.pixels)
            else:
                runs.append((chunk.layout, [chunk.pixels]))
        pixels = [parts[0] if len(parts) == 1 else torch.cat(parts) for _, parts in runs]
        taken: ModelSamples = {
            "pixels": pixels[0],
            "video_index": self.video_index[:count],
            "clip_index": self.clip_index[:count],
        }
        if len(runs) > 1 or runs[0][0] is not None:
            taken["pixels"] = pixels
            taken["layouts"] = [layout for layout, _ in runs]
        del self.video_index[:count], self.clip_index[:count]
        return taken


class BatchBuilder:
    """Collects samples per backbone and cuts them into batches of each one's batch size."""

    def __init__(self, batch_sizes: dict[str, int]) -> None:
        self._buffers = {name: _SampleBuffer(size) for name, size in batch_sizes.items()}
        self._videos: list[VideoStart] = []
        self._ends: list[SegmentEnd] = []
        self._failures: list[VideoFailure] = []
        self._shard_ends: list[ShardEnd] = []
        # Bytes decoded, each with the samples added before them: they travel with the batch
        # that takes the last of those samples, so progress counts what the model has done.
        self._added = dict.fromkeys(batch_sizes, 0)
        self._taken = dict.fromkeys(batch_sizes, 0)
        self._decoded: deque[tuple[dict[str, int], int]] = deque()
        self.decode_seconds = 0.0
        self.preprocess_seconds = 0.0
        # Pictures on a GPU still to be copied into their samples, per device.
        self._deferred: dict[torch.device, list[tuple[PackedPicture, torch.Tensor]]] = {}

    def defer_reads(
        self, device: torch.device, writes: list[tuple[PackedPicture, torch.Tensor]]
    ) -> None:
        """Pictures a GPU decoder may still be writing, each to be copied into its place in
        a sample: done by `read_deferred`, which waits for the device once for all of them."""
        self._deferred.setdefault(device, []).extend(writes)

    def read_deferred(self) -> None:
        """Wait for each device's decoder once, then copy every deferred picture (before a
        batch leaves, or before packed samples are converted)."""
        deferred, self._deferred = self._deferred, {}
        for device, writes in deferred.items():
            ready_to_read(device)
            for picture, target in writes:
                picture.write(target)

    def add_decoded_bytes(self, num_bytes: int) -> None:
        """Decoding advanced `num_bytes` through the file, after the samples added so far."""
        if num_bytes > 0:
            self._decoded.append((dict(self._added), num_bytes))

    def add_samples(
        self, model: str, samples: Samples, video_index: int, clip_index: list[int]
    ) -> None:
        """N samples for `model` of one video, sample n of clip `clip_index[n]`."""
        buffer = self._buffers[model]
        self._added[model] += len(clip_index)
        buffer.chunks.append(samples)
        buffer.video_index += [video_index] * len(clip_index)
        buffer.clip_index += clip_index

    def add_video(self, info: VideoStart) -> None:
        self._videos.append(info)

    def add_end(self, end: SegmentEnd) -> None:
        self._ends.append(end)

    def add_failure(self, failure: VideoFailure) -> None:
        self._failures.append(failure)

    def add_shard_end(self, end: ShardEnd) -> None:
        self._shard_ends.append(end)

    def full(self) -> bool:
        """Some backbone has a whole batch waiting."""
        return any(len(buffer) >= buffer.batch_size for buffer in self._buffers.values())

    def has_anything(self) -> bool:
        return bool(
            any(len(buffer) for buffer in self._buffers.values())
            or self._videos
            or self._ends
            or self._failures
            or self._shard_ends
            or self._decoded
        )

    def pop(self, final: bool = False) -> Batch:
        """The next batch: every whole batch waiting (with `final`, also short ones), plus all
        pending records."""
        self.read_deferred()
        models = {
            name: buffer.take()
            for name, buffer in self._buffers.items()
            if len(buffer) >= buffer.batch_size or (final and len(buffer))
        }
        for name, samples in models.items():
            self._taken[name] += len(samples["clip_index"])
        decoded_bytes = 0
        while self._decoded and all(
            self._decoded[0][0][name] <= self._taken[name] for name in self._taken
        ):
            decoded_bytes += self._decoded.popleft()[1]
        batch: Batch = {
            "models": models,
            "videos": self._videos,
            "ends": self._ends,
            "failures": self._failures,
            "shard_ends": self._shard_ends,
            "decoded_bytes": decoded_bytes,
            "decode_seconds": self.decode_seconds,
            "preprocess_seconds": self.preprocess_seconds,
        }
        self._videos, self._ends, self._failures, self._shard_ends = [], [], [], []
        self.decode_seconds = self.preprocess_seconds = 0.0
        return batch
