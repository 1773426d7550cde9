"""The BasePredictionWriter: each batch's features are copied to the host without waiting and
handed to a writer thread, which reassembles them per video (`vfe.output.assembly`), saves
finished videos (`vfe.output.npz`) and records failures (`vfe.output.failures`); at the end the
ranks' totals are gathered (`vfe.output.run_totals`) and reported (`vfe.output.report`)."""

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from vfe.data.paths import model_output_dirs, output_path_for
from vfe.data.records import VideoFailure, VideoStart
from vfe.data.work_plan import PlannedRun, WorkItem
from vfe.destinations import is_url
from vfe.messages import say_on_this_rank
from vfe.output.assembly import ClipFeatureAssembler, FinishedVideo, PartialVideo
from vfe.output.audit import audit_run, audit_shards, end_ownership
from vfe.output.failures import FAILURES_FILE_NAME, append_failure
from vfe.output.npz import remove_stale_temporaries, save_npz_atomically
from vfe.output.parts import (
    claim_parts,
    merge_parts,
    part_folder,
    remove_parts,
    remove_stale_parts,
    write_part,
)
from vfe.output.report import report_run, report_shard_run
from vfe.output.run_totals import RankReports, RunCounts
from vfe.output.shard_sink import ShardOutputs
from vfe.output.writer_thread import BatchResult, WriterThread, batch_result
from vfe.planning.claims import Claims, release_claims_of
from vfe.planning.owners import Heartbeat, forget_gone_runs, run_is_live
from vfe.planning.provenance import PROVENANCE_KEY, encode, file_provenance, run_provenance
from vfe.planning.shard_plan import shard_output_dirs
from vfe.stopping import STOP_REQUEST

Outcome = FinishedVideo | PartialVideo | VideoFailure  # one backbone's result for one video


class FeatureWriter(BasePredictionWriter):
    """Writes `<output_dir>/<relative path>.npz` for each finished video and logs failures;
    with several backbones, `<output_dir>/<name>/<relative path>.npz` for each.

    Off the model's path: each batch's features are copied to the host without waiting and
    handed to a writer thread, which reassembles them (`vfe.output.assembly`) and saves finished
    videos, so the next forward pass starts at once.

    Args:
        output_dir: default `features/<model name>/` (`features/` with several backbones); a
            run over shards: a local folder or an fsspec URL (`vfe.output.shard_sink`).
        rank_timeout_seconds: with several ranks, how long rank 0 waits at the end for a rank
            that sends no news (killed, node lost) before it reports it and exits.
    """

    def __init__(
        self, output_dir: str | Path | None = None, rank_timeout_seconds: float = 600.0
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.rank_timeout_seconds = rank_timeout_seconds
        self.counts = RunCounts()
        self.output_dirs: dict[str, Path] = {}
        self._assemblers: dict[str, ClipFeatureAssembler] = {}
        self._provenance: dict[str, dict[str, Any]] = {}
        self._models_left: dict[int, int] = {}  # video -> backbones still to write
        self._failed_videos: set[int] = set()
        self._start_seconds = 0.0
        self._run_id = ""
        self._thread: WriterThread | None = None
        self._reports: RankReports | None = None
        self._plan: PlannedRun | None = None  # the run's plan, from the datamodule
        self._rank = 0
        self._ranks_of: dict[int, int] = {}  # video -> ranks decoding it (this rank's videos)
        self._heartbeat: Heartbeat | None = None
        self._claims: Claims | None = None  # the run's claims on videos in shared folders
        self._ended_run = ""  # the run whose ownership rank 0 has ended
        self.total_failed = 0
        self._output_dtype = np.dtype(np.float32)  # `features` as saved (the datamodule's)
        self._shard_outputs: ShardOutputs | None = None  # a run over shards: its outputs

    @property
    def shards_done(self) -> int:
        """Shards of this rank's share settled: finished for every backbone, or left to another
        job sharing the folders (a run over shards)."""
        if self._shard_outputs is None:
            return 0
        outputs = self._shard_outputs
        return min(outputs.finished.values(), default=0) + outputs.elsewhere

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Rank 0 clears what runs that are gone left in the folders (never a live run's)."""
        names = list(pl_module.members())
        if getattr(trainer.datamodule, "input_shards", None) is not None:  # a run over shards
            self.output_dirs = shard_output_dirs(self.output_dir, names)
            if trainer.global_rank == 0:
                for folder in self.output_dirs.values():
                    if not is_url(folder):
                        local = Path(folder)
                        remove_stale_temporaries(local)
                        release_claims_of(local, lambda run, d=local: not run_is_live(d, run))
                        forget_gone_runs(local)
            return
        output_dir = Path(self.output_dir) if self.output_dir is not None else None
        self.output_dirs = model_output_dirs(output_dir, names)
        if trainer.global_rank == 0:
            for output_dir in self.output_dirs.values():
                remove_stale_temporaries(output_dir)
                remove_stale_parts(output_dir)
                release_claims_of(output_dir, lambda run, d=output_dir: not run_is_live(d, run))
                forget_gone_runs(output_dir)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        names = list(pl_module.members())
        self.counts = RunCounts(written=dict.fromkeys(names, 0), clips=dict.fromkeys(names, 0))
        self._assemblers = {name: ClipFeatureAssembler(name) for name in names}
        self._models_left, self._failed_videos = {}, set()
        self._start_seconds = time.perf_counter()
        datamodule = trainer.datamodule
        self._plan = datamodule.plan
        self._run_id = self._plan.run_id
        self._claims = self._plan.claims
        self._rank = trainer.global_rank
        self._shard_outputs = None
        self._ranks_of = {
            item.video_index: item.num_ranks
            for items in self._plan.work
            for item in items
            if isinstance(item, WorkItem)
        }
        data_settings = datamodule.provenance()
        self._output_dtype = np.dtype(getattr(datamodule, "output_dtype", "float32"))
        self._provenance = {
            name: run_provenance(member, data_settings, trainer.precision)
            for name, member in pl_module.members().items()
        }
        if self._plan.shards:
            self._shard_outputs = ShardOutputs(
                self.output_dirs,
                self._plan.shards,
                self._provenance,
                self._run_id,
                datamodule.output_format,
                self._claims,
            )
        # A thread per run: a second predict in the same process never shares it.
        self._stop_thread()
        self._thread = WriterThread(self._write)
        # Its owner record, written at planning (a run over shards into URLs has none).
        if self._rank == 0 and (not self._plan.shards or self._claims is not None):
            self._heartbeat = Heartbeat(list(self.output_dirs.values()), self._run_id).start()
        self._reports = RankReports(trainer, self._run_id, self.rank_timeout_seconds)
        self._reports.beat(0, force=True)
        # Replaces Lightning's SIGTERM handler (registered just before this hook), which
        # broadcasts inside the handler and fails once a rank has finished.
        STOP_REQUEST.install(getattr(trainer.strategy.launcher, "procs", []))

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: dict[str, torch.Tensor],
        batch_indices: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        self._thread.put(batch_result(prediction, batch))
        self._reports.beat(self.counts.videos_done)
        if STOP_REQUEST.signum is not None:
            # Every finished video is on disk (atomically) once the writer thread is done;
            # unfinished ones leave nothing, so the same command resumes.
            self._finish_writing()
            STOP_REQUEST.raise_if_requested(
                f"{self.counts.videos_done} video(s) done by this process before it"
            )

    def _finish_writing(self) -> None:
        if self._thread is not None:
            thread, self._thread = self._thread, None
            thread.finish()

    def _stop_thread(self) -> None:
        if self._thread is not None:
            thread, self._thread = self._thread, None
            thread.stop()

    def _write(self, result: BatchResult) -> None:
        """In the writer thread: one batch's features to their videos; finished ones settled."""
        for info in result.videos:
            self._models_left.setdefault(info.index, len(info.models))
            for name in info.models:
                self._assemblers[name].add_video(info)
            if info.shard is not None:
                self._shard_outputs.started(info)
        finished = []
        for name, features in result.features.items():
            videos = self._assemblers[name].add_features(
                features.float().numpy(), result.video_index[name], result.clip_index[name]
            )
            finished += [(name, video) for video in videos]
        for end in result.ends:
            for name in end.num_samples:
                videos = self._assemblers[name].add_end(end)
                finished += [(name, video) for video in videos]
        for name, video in finished:
            self._settle(name, video)
        for failure in result.failures:
            self._fail(failure)
        for end in result.shard_ends:  # after its samples' ends and failures
            self._shard_outputs.end(end)
        self.counts.decoded_bytes += result.decoded_bytes
        self.counts.clips_in_progress = {
            name: assembler.clips_in_progress for name, assembler in self._assemblers.items()
        }

    def _save(self, name: str, video: FinishedVideo) -> None:
        info = video.info
        if info.shard is not None:
            source = f"{self._plan.shards[info.shard].url}/{info.relative_path}"
        else:
            source = str(self._plan.videos[info.index].path)
        record = file_provenance(self._provenance[name], video, source, self._run_id)
        arrays = {**video.arrays, PROVENANCE_KEY: encode(record)}
        arrays["features"] = arrays["features"].astype(self._output_dtype)
        if info.shard is not None:  # the sample's key names its member
            key = Path(video.relative_path).stem
            self._shard_outputs.save(name, info, key, arrays)
        else:
            save_npz_atomically(
                output_path_for(self.output_dirs[name], video.relative_path), arrays
            )
        self.counts.written[name] += 1
        if video.decode_errors and name == info.models[0]:
            self.counts.concealed += 1  # once per video, at its first backbone
        if video.nvdec_frames == 0 and name == info.models[0]:
            self.counts.not_nvdec += 1
        self.counts.clips[name] += len(video.arrays["features"])

    def _model_done(self, info: VideoStart) -> None:
        """This rank is done with one backbone of the video (written, or its part left)."""
        self._models_left[info.index] -= 1
        if self._models_left[info.index] == 0:
            self.counts.videos_done += 1

    def _fail(self, failure: VideoFailure) -> None:
        """Drop the video for all its backbones and settle it as failed, once per video (a
        split video's segments may each fail)."""
        for name in failure.models:
            self._assemblers[name].drop_video(failure.index)
        if failure.index in self._failed_videos:
            return
        self._failed_videos.add(failure.index)
        self.counts.videos_done += 1
        for name in failure.models:
            self._settle(name, failure)

    def _settle(self, name: str, outcome: Outcome, merged: bool = False) -> None:
        """The one place a video's outcome for one backbone is decided on this rank.

        A video split over ranks leaves this rank's part (its sums, or its failure); the rank
        whose part completes the set merges them and settles the merged outcome. Otherwise the
        .npz is written or the failure recorded (once per video, in each backbone's folder),
        and the run's claim on the video is released.
        """
        info = outcome if isinstance(outcome, VideoFailure) else outcome.info
        num_ranks = self._ranks_of.get(info.index, 1)
        if not merged and num_ranks > 1:
            if isinstance(outcome, PartialVideo):
                self._model_done(outcome.info)
            folder = part_folder(self.output_dirs[name], self._run_id, info.relative_path)
            write_part(folder, self._rank, outcome)
            parts = claim_parts(folder, num_ranks)
            if parts is not None:  # this rank's part completed the set, and it merges
                self._settle(name, merge_parts(parts), merged=True)
                remove_parts(folder)
            return
        if isinstance(outcome, VideoFailure):
            if name == outcome.models[0]:
                self.counts.failed += 1  # once per video
            self._record_failure(name, outcome)
        else:
            self._save(name, outcome)
            if not merged:
                self._model_done(outcome.info)
        if self._claims is not None:
            self._claims.release(info.relative_path, (name,))

    def _record_failure(self, name: str, failure: VideoFailure) -> None:
        record = dataclasses.asdict(failure)
        del record["index"], record["shard"]  # the run's own numbering
        record |= {"run": self._run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if failure.shard is not None:  # in the shard's stats
            self._shard_outputs.fail(name, failure.shard, failure.index, record)
            return
        append_failure(self.output_dirs[name] / FAILURES_FILE_NAME, record)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._stop_thread()
        if self._shard_outputs is not None:  # unfinished shards leave nothing
            self._shard_outputs.abandon_all()
        if self._reports is not None:  # so that rank 0 does not wait for this rank's totals
            self._reports.fail(f"{type(exception).__name__}: {exception}")
        self._end_ownership(trainer)

    def _end_ownership(self, trainer: Trainer) -> None:
        """Rank 0, at the run's end however it ends (also before the first batch): its claims
        released (other jobs may take those videos), its parts removed, its owner record gone."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        plan = getattr(trainer.datamodule, "plan", None)
        if plan is not None and plan.shards and plan.claims is None:  # output at URLs
            return
        if trainer.global_rank == 0 and plan is not None and plan.run_id != self._ended_run:
            self._ended_run = plan.run_id
            end_ownership([Path(folder) for folder in self.output_dirs.values()], plan.run_id)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Before any callback's on_predict_end, so the progress bar's last line is final.
        self._finish_writing()

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish_writing()
        own = {
            "failed": self.counts.failed,
            "concealed": self.counts.concealed,
            "not_nvdec": self.counts.not_nvdec,
        }
        for name, assembler in self._assemblers.items():
            own |= {
                f"{name}/written": self.counts.written[name],
                f"{name}/clips": self.counts.clips[name],
                f"{name}/unfinished": assembler.num_pending,
            }
        unfinished = max(assembler.num_pending for assembler in self._assemblers.values())
        self.total_failed = self.counts.failed + unfinished
        if self._shard_outputs is not None:
            shards = self._shard_outputs
            own |= {f"{name}/shards": count for name, count in shards.finished.items()}
            own |= {"unreadable_shards": len(shards.errors), "open_shards": shards.unfinished}
            for error in shards.errors:
                say_on_this_rank(f"shard not finished (the same command does it again): {error}")
            shards.abandon_all()
        totals = self._reports.gather(
            own,
            self._plan.videos_per_rank,
            getattr(trainer.strategy.launcher, "procs", []),
        )
        if totals is None:  # not rank 0: rank 0 reports for all
            return
        if self._plan.shards:
            audit = None
            if self._claims is not None:  # local folders other jobs may share
                audit = audit_shards(
                    self._plan,
                    self._claims,
                    self._provenance,
                    trainer.datamodule.output_format,
                    lambda: STOP_REQUEST.raise_if_requested("waiting for another job's shards"),
                )
            self._end_ownership(trainer)
            self.total_failed = report_shard_run(
                totals,
                self.output_dirs,
                self._plan.num_skipped,
                time.perf_counter() - self._start_seconds,
                audit,
            )
            return
        # Every rank has written and merged what it could: each planned video is on disk or
        # recorded as failed, else it is recorded now as unfinished.
        audit = audit_run(
            self._plan,
            self.output_dirs,
            {name: totals[f"{name}/written"] for name in self.output_dirs},
            self._record_failure,
            lambda: STOP_REQUEST.raise_if_requested("waiting for another job's videos"),
        )
        self._end_ownership(trainer)
        self.total_failed = report_run(
            totals,
            self.output_dirs,
            self._plan.num_skipped,
            self._run_id,
            time.perf_counter() - self._start_seconds,
            audit,
        )
