"""Run totals over ranks without a collective at the end of the run.

Ranks finish hours apart when their videos differ, and a rank may have no work at all; a
collective (all-reduce, barrier) at the end would then fail at the process group's timeout
(30 minutes by default) and kill the run. Instead each rank leaves its counts in the process
group's key-value store, which answers at once, and exits; rank 0, which hosts the store, polls
it until every rank has reported and prints the totals.
"""

import json
import time

import torch.distributed as dist
from lightning.pytorch import Trainer

from vfe.errors import VfeError

POLL_SECONDS = 1.0


def gather_totals(trainer: Trainer, run_id: str, counts: dict[str, int]) -> dict[str, int] | None:
    """This rank's `counts` summed over all ranks, on rank 0; None on the other ranks."""
    if trainer.world_size == 1 or not dist.is_available() or not dist.is_initialized():
        return dict(counts)
    store = dist.distributed_c10d._get_default_store()
    keys = [f"vfe/{run_id}/totals/{rank}" for rank in range(trainer.world_size)]
    store.set(keys[trainer.global_rank], json.dumps(counts))
    if trainer.global_rank != 0:
        return None
    while not store.check(keys):
        _check_launched_ranks(trainer)
        time.sleep(POLL_SECONDS)
    totals = dict.fromkeys(counts, 0)
    for key in keys:
        for name, value in json.loads(store.get(key)).items():
            totals[name] += value
    return totals


def _check_launched_ranks(trainer: Trainer) -> None:
    """Where Lightning started the other ranks itself, one that died cannot report: say so
    rather than wait for ever. (Under torchrun or SLURM the launcher stops the whole job.)"""
    for process in getattr(trainer.strategy.launcher, "procs", []):
        code = process.poll()
        if code is not None and code != 0:
            raise VfeError(
                f"a rank's process exited with code {code} before finishing; the videos it "
                "wrote are kept, run the same command again to do the rest"
            )
