"""One progress bar per run, counted in videos, with clips and clips/s (Lightning's tqdm bar)."""

import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from vfe.writer import FeatureWriter


class VideoProgressBar(TQDMProgressBar):
    """Videos finished (written or failed) of this rank's share; only rank 0 draws it."""

    BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} videos [{elapsed}<{remaining}{postfix}]"  # noqa: E501

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._start_seconds = 0.0

    def init_predict_tqdm(self) -> Tqdm:
        bar = super().init_predict_tqdm()
        bar.bar_format = self.BAR_FORMAT
        return bar

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._start_seconds = time.perf_counter()
        datamodule = trainer.datamodule
        share = datamodule.num_videos_for_rank(trainer.global_rank) if datamodule else None
        self.predict_progress_bar.total = share
        if trainer.world_size > 1:
            self.predict_progress_bar.set_description(
                f"Extracting (rank {trainer.global_rank} of {trainer.world_size})"
            )
        else:
            self.predict_progress_bar.set_description("Extracting")

    def on_predict_batch_start(self, *args: Any, **kwargs: Any) -> None:
        # The parent resets the bar to a batch count here; this bar counts videos.
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
        self._refresh(trainer)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._refresh(trainer)
        super().on_predict_end(trainer, pl_module)

    def _refresh(self, trainer: Trainer) -> None:
        bar = self.predict_progress_bar
        writers = [cb for cb in trainer.callbacks if isinstance(cb, FeatureWriter)]
        if bar is None or bar.disable or not writers:
            return
        counts = writers[0].counts
        seconds = max(time.perf_counter() - self._start_seconds, 1e-9)
        bar.n = counts.written + counts.failed
        bar.set_postfix(
            clips=counts.clips, clips_per_s=f"{counts.clips / seconds:.1f}", failed=counts.failed
        )
