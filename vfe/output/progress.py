"""One progress bar per run (Lightning's tqdm bar), moving as the model finishes the rank's files
(bytes whose samples have features), with videos done, and clips and clips/s per backbone; in a
log (stderr not a terminal) a plain line at an interval instead; no bar when there is nothing
to extract."""

import sys
import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from vfe.data.work_plan import ShardItem, work_shares
from vfe.messages import rate_text
from vfe.output.writer import FeatureWriter

MEBIBYTE = 1 << 20


class VideoProgressBar(TQDMProgressBar):
    """This rank's share of the input, in MiB of video decoded; only rank 0 shows it.

    Args:
        log_interval_seconds: when stderr is not a terminal (a batch job's log), print one
            line this often instead of redrawing the bar.
    """

    BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"

    def __init__(self, refresh_rate: int = 1, log_interval_seconds: float = 60.0) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.log_interval_seconds = log_interval_seconds
        self._start_seconds = 0.0
        self._last_line_seconds = 0.0
        self._num_videos = 0
        self._interactive = True
        self._description = "Extracting"

    def init_predict_tqdm(self) -> Tqdm:
        return Tqdm(
            desc=self.predict_description,
            position=2 * self.process_position,
            disable=self.is_disabled or not self._interactive,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        work = trainer.datamodule.plan.work
        items = [item for items in work for item in items]
        self._num_shards = sum(isinstance(item, ShardItem) for item in items)
        if self._num_shards:  # a run over shards: their samples are not known before
            self._num_videos = self._num_shards
        else:
            self._num_videos = len({item.video_index for item in items})
        # No bar at all when there is nothing to extract (all done, or no share for this rank).
        self._interactive = sys.stderr.isatty() and self._num_videos > 0
        super().on_predict_start(trainer, pl_module)
        self._start_seconds = self._last_line_seconds = time.perf_counter()
        total_bytes = sum(work_shares(work))
        self.predict_progress_bar.total = max(total_bytes, 1) / MEBIBYTE
        self._description = "Extracting"
        if trainer.world_size > 1:
            self._description += f" (rank {trainer.global_rank} of {trainer.world_size})"
        self.predict_progress_bar.set_description(self._description)

    def on_predict_batch_start(self, *args: Any, **kwargs: Any) -> None:
        # The parent resets the bar to a batch count here; this bar counts bytes decoded.
        pass

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._refresh(trainer, final=False)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._refresh(trainer, final=True)
        super().on_predict_end(trainer, pl_module)

    def _refresh(self, trainer: Trainer, final: bool) -> None:
        bar = self.predict_progress_bar
        writers = [cb for cb in trainer.callbacks if isinstance(cb, FeatureWriter)]
        if bar is None or not writers or not trainer.is_global_zero or not self._num_videos:
            return
        counts = writers[0].counts
        now = time.perf_counter()
        clips = counts.clips_with_features()
        bar.n = bar.total if final else min(bar.total, counts.decoded_bytes / MEBIBYTE)
        elapsed = max(now - self._start_seconds, 1e-9)
        if len(clips) == 1:
            (count,) = clips.values()
            shown_clips, rate = str(count), rate_text(count, elapsed)
        else:  # each backbone's own count: they finish a video's clips at different times
            shown_clips = " ".join(f"{name}:{count}" for name, count in clips.items())
            rate = " ".join(f"{name}:{rate_text(count, elapsed)}" for name, count in clips.items())
        videos = {"videos": f"{counts.videos_done}/{self._num_videos}"}
        if self._num_shards:
            videos = {"shards": f"{writers[0].shards_done}/{self._num_shards}"}
            videos["videos"] = str(counts.videos_done)
        bar.set_postfix(
            {
                **videos,
                "clips": shown_clips,
                "clips_per_s": rate,
                "failed": counts.failed,
            },
            refresh=self._interactive,
        )
        due = final or now - self._last_line_seconds >= self.log_interval_seconds
        if self._interactive or not due:
            return
        self._last_line_seconds = now
        percent = 100 * bar.n / bar.total if bar.total else 100.0
        elapsed = bar.format_interval(now - self._start_seconds)
        print(
            f"{self._description}: {percent:.0f}% [{elapsed}] {bar.postfix or ''}",
            file=sys.stderr,
            flush=True,
        )
