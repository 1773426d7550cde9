"""Run totals over ranks without a collective at the end of the run, and a watch for lost ranks.

Ranks finish hours apart when their videos differ, and a rank may have no work at all; a
collective (all-reduce, barrier) at the end would then fail at the process group's timeout
(30 minutes by default) and kill the run. Instead each rank leaves its counts in the process
group's key-value store, which answers at once, and exits; rank 0, which hosts the store, polls
it until every rank has reported and prints the totals.

A rank can also die (out of memory, a node lost, a bug) without reporting. So that rank 0 never
waits for ever, every rank leaves news in the store as it works (a heartbeat after its batches)
and a record if it raises; rank 0 gives up on a rank that raised, whose process (where Lightning
launched it) exited, or that sent no news for `timeout_seconds`, naming it and the videos it
leaves unwritten (the same command resumes them).
"""

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist
from lightning.pytorch import Trainer

from vfe.stopping import STOP_REQUEST

POLL_SECONDS = 1.0
HEARTBEAT_SECONDS = 5.0


@dataclass
class RunCounts:
    """This process's progress; per backbone where backbones differ."""

    written: dict[str, int] = field(default_factory=dict)
    clips: dict[str, int] = field(default_factory=dict)
    failed: int = 0  # videos, once each whatever the backbones affected
    concealed: int = 0  # videos written with errors the decoder concealed (where allowed)
    not_nvdec: int = 0  # decoding on cuda: videos FFmpeg decoded in software (NVDEC could not)
    videos_done: int = 0  # written for all their backbones, or failed
    decoded_bytes: int = 0  # how far decoding has got through this rank's files
    clips_in_progress: dict[str, int] = field(default_factory=dict)  # clips with features so
    # far, of videos not yet written

    def clips_with_features(self) -> dict[str, int]:
        """Per backbone, clips whose features are computed (written or not yet)."""
        return {
            name: done + self.clips_in_progress.get(name, 0) for name, done in self.clips.items()
        }


class RankLost(Exception):
    """Another rank stopped without reporting; its unwritten videos are resumed by a rerun."""


class RankReports:
    """This rank's news in the process group's store, and rank 0's watch over all ranks."""

    def __init__(self, trainer: Trainer, run_id: str, timeout_seconds: float) -> None:
        self.enabled = trainer.world_size > 1 and dist.is_available() and dist.is_initialized()
        self.rank, self.world_size = trainer.global_rank, trainer.world_size
        self.run_id, self.timeout_seconds = run_id, timeout_seconds
        self._store = dist.distributed_c10d._get_default_store() if self.enabled else None
        self._beats, self._last_beat = 0, 0.0

    def _key(self, kind: str, rank: int) -> str:
        return f"vfe/{self.run_id}/{kind}/{rank}"

    def beat(self, videos_done: int, force: bool = False) -> None:
        """Tell rank 0 this rank is alive (at most every HEARTBEAT_SECONDS unless `force`)."""
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last_beat < HEARTBEAT_SECONDS):
            return
        self._beats, self._last_beat = self._beats + 1, now
        try:
            self._store.set(self._key("alive", self.rank), json.dumps([self._beats, videos_done]))
        except RuntimeError as error:  # c10d's store errors: rank 0, which hosts it, is gone
            raise RankLost(
                f"rank 0, which holds the run's records, does not answer ({error}); this "
                "rank's finished videos are written, run the same command again to finish the "
                "others"
            ) from error

    def fail(self, reason: str) -> None:
        """Record that this rank is stopping on an error (best effort: the store may be gone)."""
        if self.enabled:
            with contextlib.suppress(RuntimeError):  # c10d's store errors are RuntimeErrors
                self._store.set(self._key("failed", self.rank), reason[:500])

    def gather(
        self,
        counts: dict[str, int],
        videos_per_rank: list[int],
        launched: list[subprocess.Popen] | None = None,
    ) -> dict[str, int] | None:
        """This rank's `counts` summed over all ranks, on rank 0; None on the other ranks.

        Rank 0 raises `RankLost` for a rank that raised, whose launched process exited
        without reporting, or that sent no news for `timeout_seconds`; `StoppedBySignal` if a
        stop signal arrives meanwhile.
        """
        if not self.enabled:
            return dict(counts)
        try:
            self._store.set(self._key("totals", self.rank), json.dumps(counts))
        except RuntimeError as error:
            raise RankLost(
                f"rank 0, which holds the run's records, does not answer ({error}); this "
                "rank's videos are written, run the same command again to finish the others"
            ) from error
        if self.rank != 0:
            return None
        news: dict[int, tuple[Any, float]] = {}  # rank -> (last heartbeat seen, when seen)
        while True:
            missing = [
                rank
                for rank in range(self.world_size)
                if not self._store.check([self._key("totals", rank)])
            ]
            if not missing:
                break
            STOP_REQUEST.raise_if_requested("waiting for the other ranks")
            now = time.monotonic()
            for rank in missing:
                self._check_rank(rank, now, news, videos_per_rank, launched or [])
            time.sleep(POLL_SECONDS)
        totals = dict.fromkeys(counts, 0)
        for rank in range(self.world_size):
            for name, value in json.loads(self._store.get(self._key("totals", rank))).items():
                totals[name] = totals.get(name, 0) + value
        return totals

    def _check_rank(
        self,
        rank: int,
        now: float,
        news: dict[int, tuple[Any, float]],
        videos_per_rank: list[int],
        launched: list[subprocess.Popen],
    ) -> None:
        store = self._store
        heartbeat = None
        if store.check([self._key("alive", rank)]):
            heartbeat = json.loads(store.get(self._key("alive", rank)))
        done = heartbeat[1] if heartbeat else 0
        left = max(0, videos_per_rank[rank] - done) if rank < len(videos_per_rank) else "its"
        unwritten = f"{left} video(s) of it are not written; run the same command again to do them"
        if store.check([self._key("failed", rank)]):
            reason = store.get(self._key("failed", rank)).decode("utf-8", "replace")
            raise RankLost(f"rank {rank} stopped on an error ({reason}); {unwritten}")
        # Lightning launched ranks 1.. as child processes of rank 0 (none under srun/torchrun).
        process = launched[rank - 1] if 0 < rank <= len(launched) else None
        if process is not None and process.poll() is not None:
            raise RankLost(
                f"rank {rank}'s process exited with code {process.returncode} before "
                f"reporting; {unwritten}"
            )
        if rank not in news or news[rank][0] != heartbeat:
            news[rank] = (heartbeat, now)
        elif now - news[rank][1] > self.timeout_seconds:
            raise RankLost(
                f"rank {rank} sent no news for {self.timeout_seconds:g} s (killed, or its node "
                f"lost?); {unwritten}"
            )
