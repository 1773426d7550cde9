"""Writes one .npz per finished video, atomically, from a thread beside the model, records
failures, and reports the run's totals."""

import contextlib
import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from vfe.assembly import ClipFeatureAssembler
from vfe.messages import say
from vfe.paths import FAILURES_FILE_NAME, output_path_for, resolve_output_dir
from vfe.provenance import PROVENANCE_KEY, encode, run_provenance, video_provenance
from vfe.run_totals import gather_totals

TEMPORARY_SUFFIX = ".vfe-tmp"
# A temporary is written and renamed within seconds; one this old belongs to a killed run.
STALE_TEMPORARY_SECONDS = 600
MAX_FAILURES_SHOWN = 20


def save_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `path` so that it is either absent or complete: temporary file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        with open(temporary, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class StoppedBySignal(Exception):
    """SIGTERM (a scheduler's stop) arrived: the run stopped after the batch in hand."""


@dataclass
class RunCounts:
    written: int = 0
    failed: int = 0
    clips: int = 0
    decoded_bytes: int = 0  # how far decoding has got through this rank's files
    clips_in_progress: int = 0  # clips with features so far, of videos not yet written


@dataclass
class _BatchResult:
    """What the writer thread needs of one batch."""

    features: torch.Tensor  # (B, D) float32 on the host; the copy may still be in flight
    copied: Any  # a CUDA event recorded after the copy, or None for a CPU model
    video_index: np.ndarray
    clip_index: np.ndarray
    videos: list[dict[str, Any]]
    ends: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    decoded_bytes: int


# Batches the writer thread may fall behind before the model waits for it (bounds memory).
MAX_QUEUED_BATCHES = 16


class FeatureWriter(BasePredictionWriter):
    """Writes `<output_dir>/<relative path>.npz` for each finished video and logs failures.

    Off the model's path: each batch's features are copied to the host without waiting and
    handed to a writer thread, which reassembles them (`vfe.assembly`) and saves finished
    videos, so the next forward pass starts at once.

    Args:
        output_dir: default `features/<model name>/`.
    """

    def __init__(self, output_dir: Path | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.assembler = ClipFeatureAssembler()
        self.counts = RunCounts()
        self._resolved_output_dir = Path()
        self._start_seconds = 0.0
        self._run_id = ""
        self._run_provenance: dict[str, Any] = {}
        self._queue: queue.Queue[_BatchResult | None] = queue.Queue(MAX_QUEUED_BATCHES)
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        self.total_failed = 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._resolved_output_dir = resolve_output_dir(self.output_dir, pl_module.name)
        if trainer.global_rank == 0 and self._resolved_output_dir.is_dir():
            # A killed run can leave temporaries behind; they are never valid outputs. Only old
            # ones go: a run writing into the same folder right now owns the fresh ones.
            oldest_kept = time.time() - STALE_TEMPORARY_SECONDS
            for stale in self._resolved_output_dir.rglob(f".*{TEMPORARY_SUFFIX}"):
                with contextlib.suppress(FileNotFoundError):  # its run renamed it meanwhile
                    if stale.stat().st_mtime < oldest_kept:
                        stale.unlink()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.assembler = ClipFeatureAssembler()
        self.counts = RunCounts()
        self._start_seconds = time.perf_counter()
        datamodule = trainer.datamodule
        self._run_id = getattr(datamodule, "run_id", "")
        self._run_provenance = run_provenance(pl_module, datamodule.provenance(), trainer.precision)
        self._thread_error = None
        self._thread = threading.Thread(target=self._write_batches, name="vfe-writer", daemon=True)
        self._thread.start()

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: torch.Tensor,
        batch_indices: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        self._raise_writer_error()
        features, copied = prediction.detach(), None
        if features.device.type == "cuda":
            host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
            host.copy_(features, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            features = host
        self._queue.put(
            _BatchResult(
                features.cpu(),
                copied,
                np.asarray(batch["video_index"], dtype=np.int64),
                np.asarray(batch["clip_index"], dtype=np.int64),
                batch["videos"],
                batch["ends"],
                batch["failures"],
                batch.get("decoded_bytes", 0),
            )
        )
        if trainer.received_sigterm:
            # Lightning only notes the signal during predict. Every finished video is on disk
            # (atomically) once the writer thread is done; unfinished ones leave nothing, so
            # the same command resumes.
            self._finish_writing()
            raise StoppedBySignal(
                f"stopped by SIGTERM; {self.counts.written} video(s) written by this process "
                "before it; run the same command again to resume"
            )

    def _write_batches(self) -> None:
        """The writer thread: every queued batch in order until None; after an error it keeps
        taking batches (so the model never blocks on a full queue) and the main thread raises."""
        while (result := self._queue.get()) is not None:
            if self._thread_error is None:
                try:
                    self._write(result)
                except BaseException as error:  # re-raised in the main thread
                    self._thread_error = error

    def _raise_writer_error(self) -> None:
        if self._thread_error is not None:
            raise self._thread_error

    def _finish_writing(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._raise_writer_error()

    def _write(self, result: _BatchResult) -> None:
        if result.copied is not None:
            result.copied.synchronize()
        for info in result.videos:
            self.assembler.add_video(info)
        finished = self.assembler.add_features(
            result.features.float().numpy(), result.video_index, result.clip_index
        )
        for end in result.ends:
            finished += self.assembler.add_end(end)
        for video in finished:
            info = video.info
            record = {
                **self._run_provenance,
                **video_provenance(info["size_bytes"], info["mtime_ns"]),
            }
            save_npz_atomically(
                output_path_for(self._resolved_output_dir, video.relative_path),
                {**video.arrays, PROVENANCE_KEY: encode(record)},
            )
            self.counts.written += 1
            self.counts.clips += len(video.arrays["features"])
        for failure in result.failures:
            if self.assembler.drop_video(failure["index"]):  # once per video, not per segment
                self._record_failure(failure)
        self.counts.decoded_bytes += result.decoded_bytes
        self.counts.clips_in_progress = self.assembler.clips_in_progress

    def _record_failure(self, failure: dict[str, Any]) -> None:
        self.counts.failed += 1
        record = {k: failure[k] for k in ("path", "relative_path", "stage", "error")}
        record |= {"run": self._run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._resolved_output_dir.mkdir(parents=True, exist_ok=True)
        # One short line per write with O_APPEND: lines from several ranks never interleave.
        with open(self._resolved_output_dir / FAILURES_FILE_NAME, "a", encoding="utf-8") as file:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if self._thread is not None:  # let the thread end; the exception is what matters
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
            self._thread = None

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish_writing()
        own = {
            "written": self.counts.written,
            "failed": self.counts.failed,
            "clips": self.counts.clips,
            "unfinished": self.assembler.num_pending,
        }
        self.total_failed = own["failed"] + own["unfinished"]
        totals = gather_totals(trainer, self._run_id, own)
        if totals is None:  # not rank 0: rank 0 reports for all
            return
        written, failed, clips, unfinished = (totals[k] for k in own)
        self.total_failed = failed + unfinished
        skipped = getattr(trainer.datamodule, "num_skipped", 0)
        seconds = time.perf_counter() - self._start_seconds
        say(
            f"written {written}, skipped {skipped}, failed {failed}, clips {clips}, "
            f"wall time {seconds:.1f} s -> {self._resolved_output_dir}"
        )
        if failed:
            # Every rank appended its failures before reporting its totals.
            failures_file = self._resolved_output_dir / FAILURES_FILE_NAME
            print(f"vfe: {failed} video(s) failed; reasons in {failures_file}", file=sys.stderr)
            records = [r for r in read_failures(failures_file) if r.get("run") == self._run_id]
            for record in records[:MAX_FAILURES_SHOWN]:
                reason = f"{record['stage']}: {record['error']}"
                print(f"  {record['relative_path']}: {reason}", file=sys.stderr)
            if failed > MAX_FAILURES_SHOWN:
                print(f"  ... and {failed - MAX_FAILURES_SHOWN} more", file=sys.stderr)
        if unfinished:
            say(f"{unfinished} video(s) ended incomplete and were not written")


def read_failures(failures_file: Path) -> list[dict[str, Any]]:
    """The records of `failures.jsonl` (every run appends its own, marked with its `run`)."""
    if not failures_file.exists():
        return []
    with open(failures_file, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
