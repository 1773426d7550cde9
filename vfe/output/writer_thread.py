"""The writer's thread: batches handed over by the model's loop are written in order beside it,
so the next forward pass does not wait for assembly or disk."""

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vfe.data.records import SegmentEnd, ShardEnd, VideoFailure, VideoStart

# Batches the writer thread may fall behind before the model waits for it (bounds memory).
MAX_QUEUED_BATCHES = 16
# How long a failing run waits for the writer thread to end (a hung file system must not hang
# the run's exit).
THREAD_JOIN_SECONDS = 60.0


@dataclass
class BatchResult:
    """What the writer thread needs of one batch."""

    features: dict[str, torch.Tensor]  # per backbone (B, D) float32 on the host; the copy may
    # still be in flight
    copied: Any  # a CUDA event recorded after the copies, or None for a CPU model
    video_index: dict[str, np.ndarray]
    clip_index: dict[str, np.ndarray]
    videos: list[VideoStart]
    ends: list[SegmentEnd]
    failures: list[VideoFailure]
    decoded_bytes: int
    shard_ends: list[ShardEnd] = field(default_factory=list)


def batch_result(prediction: dict[str, torch.Tensor], batch: dict[str, Any]) -> BatchResult:
    """The batch's features copied to the host without waiting (pinned memory, one CUDA event
    after all the copies), with its records."""
    features, copied = {}, None
    for name, tensor in prediction.items():
        tensor = tensor.detach()
        if tensor.device.type == "cuda":
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            tensor = host
            copied = torch.cuda.Event()
        features[name] = tensor.cpu()
    if copied is not None:
        copied.record()  # after all the copies
    models = batch["models"]
    return BatchResult(
        features,
        copied,
        {n: np.asarray(models[n]["video_index"], dtype=np.int64) for n in features},
        {n: np.asarray(models[n]["clip_index"], dtype=np.int64) for n in features},
        batch["videos"],
        batch["ends"],
        batch["failures"],
        batch.get("decoded_bytes", 0),
        batch.get("shard_ends", []),
    )


class WriterThread:
    """Applies `write` to every batch put, in order, in one daemon thread. After an error it
    keeps taking batches (so the model never blocks on a full queue); the error is raised in
    the caller's thread at the next `put` or at `finish`."""

    def __init__(self, write: Callable[[BatchResult], None]) -> None:
        self._write = write
        self._queue: queue.Queue[BatchResult | None] = queue.Queue(MAX_QUEUED_BATCHES)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vfe-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (result := self._queue.get()) is not None:
            if self.error is None:
                try:
                    if result.copied is not None:
                        result.copied.synchronize()
                    self._write(result)
                except BaseException as error:  # re-raised in the caller's thread
                    self.error = error

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, result: BatchResult) -> None:
        self.raise_error()
        self._queue.put(result)

    def finish(self) -> None:
        """Write everything put so far, end the thread, and raise its error if any."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.raise_error()

    def stop(self) -> None:
        """End the thread after a failure: it drains the queue (dropping what it has not
        written) and is joined, so no thread of the run outlives it."""
        if not self._thread.is_alive():
            return
        deadline = time.monotonic() + THREAD_JOIN_SECONDS
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=THREAD_JOIN_SECONDS)
        self._thread.join(max(0.0, deadline - time.monotonic()))
