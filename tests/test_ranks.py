"""Stopping and losing ranks: signals when a rank has finished, ranks that raise or are killed
under an external launcher (srun, torchrun), Ctrl-C, SLURM's signals and requeue, no collective
at the end, and the decode threads per node."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_in_process, stop_after_first_file

from vfe.bench.synthetic import write_video
from vfe.data import datamodule

MODELS = '''
import os
import signal
import time

from vfe.backbones.openai_clip import CLIPBackbone


class SlowCLIP(CLIPBackbone):
    """0.3 s per batch: a rank that works while another has finished."""

    name = "clip"

    def encode(self, samples):
        time.sleep(0.3)
        return super().encode(samples)


class RankOneRaises(CLIPBackbone):
    name = "clip"

    def encode(self, samples):
        if self.global_rank == 1:
            raise ZeroDivisionError("injected on rank 1")
        return super().encode(samples)


class RankOneIsKilled(CLIPBackbone):
    name = "clip"

    def encode(self, samples):
        if self.global_rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does
        return super().encode(samples)
'''


def vfe_command(model: str, weights: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "vfe", "predict", "--model", model, "--model.arch", "custom",
        "--model.weights", str(weights), "--input_dir", "in", "--output_dir", "out",
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--data.num_workers", "0", "--batch_size", "4", *extra,
    ]  # fmt: skip


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's models importable (DDP's child ranks inherit it), warnings quiet."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    python_path = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    return {**env, "PYTHONPATH": python_path, "PYTHONWARNINGS": "ignore", **extra}


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    (tmp_path / "test_models.py").write_text(MODELS)
    return tmp_path


@pytest.mark.slow
def test_sigterm_after_a_rank_finished_stops_cleanly_and_resumes(
    models_dir: Path, tiny_clip_file: Path
):
    """Rank 1 gets one tiny video and exits; rank 0 is still working when SIGTERM comes.
    Lightning's handler would broadcast to the gone rank ("Connection closed by peer")."""
    tmp_path = models_dir
    write_video(tmp_path / "in" / "long.mp4", num_frames=100, seed=1)  # 25 batches: 7.5 s
    write_video(tmp_path / "in" / "tiny.mp4", num_frames=4, seed=2)
    args = vfe_command(
        "test_models.SlowCLIP", tiny_clip_file, "--trainer.devices", "2",
        "--trainer.strategy", "ddp",
    )  # fmt: skip
    env = environment(tmp_path)
    process = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while not (tmp_path / "out" / "tiny.npz").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(3)  # rank 1 reports its totals and exits
    assert process.poll() is None and not (tmp_path / "out" / "long.npz").exists()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    stderr = stderr.decode()
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    one_process = args[: args.index("--trainer.devices")]  # what is on disk is what counts
    rerun = run_in_process(one_process[3:], tmp_path, {"PYTHONPATH": str(tmp_path)})
    assert rerun.returncode == 0, rerun.stderr
    assert "written 1, skipped 1" in rerun.stderr
    assert np.load(tmp_path / "out" / "long.npz")["features"].shape == (2, 32)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two_ranks_by_hand(args: list[str], tmp_path: Path) -> list[subprocess.Popen]:
    """Two ranks started the way srun or torchrun start them: each its own process, with the
    rendezvous in the environment, nothing watching the other."""
    port = str(_free_port())
    processes = []
    for rank in (0, 1):
        env = environment(
            tmp_path, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2",
            RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0",
        )  # fmt: skip
        processes.append(
            subprocess.Popen(
                args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    return processes


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("test_models.RankOneRaises", "rank 1 stopped on an error (ZeroDivisionError"),
        ("test_models.RankOneIsKilled", "rank 1 sent no news for 5 s"),
    ],
    ids=["raises", "killed"],
)
def test_a_lost_rank_under_an_external_launcher_ends_the_run(
    model, message, models_dir: Path, tiny_clip_file: Path
):
    tmp_path = models_dir
    write_video(tmp_path / "in" / "a.mp4", num_frames=30, seed=1)
    write_video(tmp_path / "in" / "b.mp4", num_frames=30, seed=2)
    args = vfe_command(
        model, tiny_clip_file, "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--writer.rank_timeout_seconds", "5",
    )  # fmt: skip
    rank0, rank1 = launch_two_ranks_by_hand(args, tmp_path)
    _, stderr = rank0.communicate(timeout=300)
    rank1.communicate(timeout=60)
    stderr = stderr.decode()
    assert rank0.returncode == 3, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("vfe: error:")]
    assert len(lines) == 1 and message in lines[0], stderr
    assert "1 video(s) of it are not written" in lines[0]
    assert rank1.returncode in (4, -signal.SIGKILL)  # a traceback, or killed
    assert len(list((tmp_path / "out").glob("*.npz"))) == 1  # rank 0's video
    # The same command on one process (rank 0 never fails), in this one.
    rerun = run_in_process(
        vfe_command(model, tiny_clip_file)[3:], tmp_path, {"PYTHONPATH": str(tmp_path)}
    )
    assert rerun.returncode == 0 and "written 1, skipped 1" in rerun.stderr, rerun.stderr


@pytest.mark.slow
def test_ctrl_c_stops_after_the_batch_with_130(tiny_clip_file: Path, tmp_path: Path):
    for index in range(4):
        write_video(tmp_path / "in" / f"v{index}.mp4", num_frames=250, seed=index)
    args = vfe_command("clip", tiny_clip_file)
    returncode, stderr = stop_after_first_file(
        args, tmp_path, tmp_path / "out", signal.SIGINT, environment(tmp_path)
    )
    assert returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert [line for line in lines if "stopped by SIGINT" in line] and "Traceback" not in stderr
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_a_slurm_job_stopped_by_its_signal_resumes_when_requeued(
    tiny_clip_file: Path, tmp_path: Path
):
    """As sbatch --signal=USR1@90 (or SIGTERM at preemption) does to a job's tasks; Lightning's
    own SLURM handler would save a training checkpoint and call scontrol."""
    for index in range(6):
        write_video(tmp_path / "in" / f"v{index}.mp4", num_frames=150, seed=index)
    slurm = environment(
        tmp_path, SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1", SLURM_NNODES="1",
        SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="features", SLURM_CPUS_ON_NODE="2",
    )  # fmt: skip
    args = vfe_command("clip", tiny_clip_file)
    for signum in (signal.SIGUSR1, signal.SIGTERM):
        returncode, stderr = stop_after_first_file(args, tmp_path, tmp_path / "out", signum, slurm)
        assert returncode == 128 + signum, stderr
        assert f"stopped by {signal.Signals(signum).name}" in stderr
        assert not list(tmp_path.rglob("*.ckpt"))
    done = len(list((tmp_path / "out").glob("*.npz")))
    assert 2 <= done < 6
    requeued = subprocess.run(
        args, cwd=tmp_path, env=slurm, capture_output=True, text=True, timeout=600
    )
    assert requeued.returncode == 0, requeued.stderr
    assert f"written {6 - done}, skipped {done}" in requeued.stderr


UNEVEN_DDP_RUN = """
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
from lightning.pytorch import Callback, Trainer

from vfe.backbones.openai_clip import CLIPBackbone
from vfe.data.datamodule import VideoDataModule
from vfe.output.writer import FeatureWriter


class SlowCLIP(CLIPBackbone):
    def encode(self, samples):
        time.sleep(0.5)  # 15 batches: the working rank ends 7 s after the idle one
        return super().encode(samples)


class ShortTimeoutAfterStart(Callback):
    # Start-up (rendezvous, the plan's broadcast) keeps the default timeout; from the first
    # batch on, any collective would fail after 4 s.
    def on_predict_start(self, trainer, pl_module):
        dist.set_timeout(timedelta(seconds=4))


if __name__ == "__main__":
    input_dir, output_dir, weights = sys.argv[1:4]
    writer = FeatureWriter(Path(output_dir))
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False,
        callbacks=[writer, ShortTimeoutAfterStart()], enable_progress_bar=False,
        enable_model_summary=False,
    )
    datamodule = VideoDataModule(Path(input_dir), Path(output_dir), batch_size=4, num_workers=0)
    trainer.predict(SlowCLIP(arch="custom", weights=weights), datamodule=datamodule,
                    return_predictions=False)
    print(f"rank {trainer.global_rank} done, failed {writer.total_failed}", flush=True)
"""


@pytest.mark.slow
def test_ranks_ending_far_apart_never_wait_in_a_collective(tiny_clip_file: Path, tmp_path: Path):
    """One video on 2 ranks: rank 1 has no work and ends at once, rank 0 works 7 s longer than
    the 4-s timeout every collective has after start-up; one at the end would kill the run."""
    write_video(tmp_path / "in" / "only.mp4", num_frames=60, fps=25, seed=6)
    script = tmp_path / "uneven.py"
    script.write_text(UNEVEN_DDP_RUN)
    result = subprocess.run(
        [sys.executable, str(script), "in", "out", str(tiny_clip_file)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 done, failed 0" in result.stdout and "rank 1 done" in result.stdout
    assert "written 1, skipped 0, failed 0, clips 2" in result.stderr
    assert np.load(tmp_path / "out" / "only.npz")["features"].shape == (2, 32)


@pytest.mark.parametrize(
    ("cores", "machine_cores", "workers", "ranks", "threads"),
    [
        (64, 64, 8, 8, 1),  # 8 ranks x 8 workers sharing a 64-core node: not 512 threads
        (64, 64, 8, 1, 8),
        (64, 64, 2, 4, 8),
        (8, 64, 8, 8, 1),  # each rank bound to 8 cores by the scheduler
        (16, 64, 2, 4, 8),
        (2, 2, 0, 1, 1),  # decoding in the main process
    ],
)
def test_decode_threads_are_shared_over_the_node(
    cores, machine_cores, workers, ranks, threads, monkeypatch
):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(os, "cpu_count", lambda: machine_cores)
    assert datamodule.default_decode_threads(workers, ranks) == threads
