"""Reassembles clip features from batches and writes one .npz per video, atomically.

`ClipFeatureAssembler` holds only unfinished videos: per clip the running sum of its samples'
features and their count. A video is finished when its end record (clip count, windows, fps)
has arrived and so have all the samples it announces; its clip features (the mean over samples)
are then final and the video is handed back to be written.
"""

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from vfe.messages import say
from vfe.paths import FAILURES_FILE_NAME, output_path_for, resolve_output_dir
from vfe.provenance import PROVENANCE_KEY, encode, run_provenance, video_provenance

TEMPORARY_SUFFIX = ".vfe-tmp"
# A temporary is written and renamed within seconds; one this old belongs to a killed run.
STALE_TEMPORARY_SECONDS = 600
MAX_FAILURES_SHOWN = 20


@dataclass
class _PendingVideo:
    info: dict[str, Any]
    feature_sums: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (clips, D) f64
    sample_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (clips,)
    samples_seen: int = 0
    end: dict[str, Any] | None = None

    def add(self, features: np.ndarray, clip_index: np.ndarray) -> None:
        """`features (N, D)` of samples of clips `clip_index (N,)`."""
        needed = int(clip_index.max()) + 1
        if needed > len(self.sample_counts):  # clips arrive in order: grow geometrically
            capacity = max(needed, 2 * len(self.sample_counts))
            sums = np.zeros((capacity, features.shape[1]), dtype=np.float64)
            counts = np.zeros(capacity, dtype=np.int64)
            if len(self.sample_counts):
                sums[: len(self.feature_sums)] = self.feature_sums
                counts[: len(self.sample_counts)] = self.sample_counts
            self.feature_sums, self.sample_counts = sums, counts
        np.add.at(self.feature_sums, clip_index, features)
        self.sample_counts += np.bincount(clip_index, minlength=len(self.sample_counts))
        self.samples_seen += len(clip_index)

    @property
    def complete(self) -> bool:
        return self.end is not None and self.samples_seen == self.end["num_samples"]


@dataclass
class FinishedVideo:
    relative_path: str
    arrays: dict[str, np.ndarray]
    info: dict[str, Any]  # the video's start record (see `vfe.dataset`)


class ClipFeatureAssembler:
    """Turns a stream of per-sample features into per-video clip features."""

    def __init__(self) -> None:
        self._pending: dict[int, _PendingVideo] = {}
        self._failed: set[int] = set()

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def add_video(self, info: dict[str, Any]) -> None:
        self._pending[info["index"]] = _PendingVideo(info)

    def drop_video(self, video_index: int) -> None:
        """Forget a video that failed part-way; its later samples are ignored."""
        self._pending.pop(video_index, None)
        self._failed.add(video_index)

    def add_features(
        self, features: np.ndarray, video_index: np.ndarray, clip_index: np.ndarray
    ) -> list[FinishedVideo]:
        """`features (B, D)` of samples with their video and clip; returns finished videos."""
        finished = []
        for video in np.unique(video_index).tolist():
            if video in self._failed:
                continue
            rows = video_index == video
            pending = self._pending[video]
            pending.add(features[rows], clip_index[rows])
            if pending.complete:
                finished.append(self._finish(video))
        return finished

    def add_end(self, end: dict[str, Any]) -> list[FinishedVideo]:
        """A video's end record (see `vfe.dataset`); returns it finished if its samples are in."""
        if end["index"] in self._failed:
            return []
        pending = self._pending[end["index"]]
        pending.end = end
        return [self._finish(end["index"])] if pending.complete else []

    def _finish(self, video_index: int) -> FinishedVideo:
        pending = self._pending.pop(video_index)
        end = pending.end
        num_clips = end["num_clips"]
        counts = pending.sample_counts[:num_clips]
        if len(pending.sample_counts) > num_clips and pending.sample_counts[num_clips:].any():
            raise RuntimeError(f"video {video_index}: samples beyond its {num_clips} clips")
        if not counts.all():
            raise RuntimeError(f"video {video_index}: clips without samples: {counts.tolist()}")
        means = pending.feature_sums[:num_clips] / counts[:, None]
        arrays = {
            "features": means.astype(np.float32),
            "fps": np.float64(end["fps"]),
            "clip_length": np.float64(end["clip_length"]),
            "timestamps": np.asarray(end["timestamps"], dtype=np.float64),
        }
        return FinishedVideo(pending.info["relative_path"], arrays, pending.info)


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


class FeatureWriter(BasePredictionWriter):
    """Writes `<output_dir>/<relative path>.npz` for each finished video and logs failures.

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
        for info in batch["videos"]:
            self.assembler.add_video(info)
        features = prediction.detach().float().cpu().numpy()
        finished = self.assembler.add_features(
            features, np.asarray(batch["video_index"]), np.asarray(batch["clip_index"])
        )
        for end in batch["ends"]:
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
        for failure in batch["failures"]:
            self.assembler.drop_video(failure["index"])
            self._record_failure(failure)
        if trainer.received_sigterm:
            # Lightning only notes the signal during predict. Every finished video is on disk
            # (atomically); unfinished ones leave nothing, so the same command resumes.
            raise StoppedBySignal(
                f"stopped by SIGTERM; {self.counts.written} video(s) written by this process "
                "before it; run the same command again to resume"
            )

    def _record_failure(self, failure: dict[str, Any]) -> None:
        self.counts.failed += 1
        record = {k: failure[k] for k in ("path", "relative_path", "stage", "error")}
        record |= {"run": self._run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._resolved_output_dir.mkdir(parents=True, exist_ok=True)
        # One short line per write with O_APPEND: lines from several ranks never interleave.
        with open(self._resolved_output_dir / FAILURES_FILE_NAME, "a", encoding="utf-8") as file:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        totals = torch.tensor(
            [
                self.counts.written,
                self.counts.failed,
                self.counts.clips,
                self.assembler.num_pending,
            ],
            dtype=torch.float64,
            device=pl_module.device,
        )
        totals = trainer.strategy.reduce(totals, reduce_op="sum")
        written, failed, clips, unfinished = (int(x) for x in totals.tolist())
        self.total_failed = failed + unfinished
        skipped = getattr(trainer.datamodule, "num_skipped", 0)
        seconds = time.perf_counter() - self._start_seconds
        say(
            f"written {written}, skipped {skipped}, failed {failed}, clips {clips}, "
            f"wall time {seconds:.1f} s -> {self._resolved_output_dir}"
        )
        if failed and trainer.is_global_zero:
            # Every rank has appended its failures by now (the reduce above waits for all).
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
