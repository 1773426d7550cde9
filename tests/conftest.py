"""Shared fixtures: synthetic videos and random-weight checkpoints saved to files, the
real-world corpus, and the reference decode every decoder is compared with."""

import contextlib
import importlib.util
import io
import itertools
import json
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from vfe.bench.synthetic import (
    REAL_WORLD_VIDEOS,
    ffmpeg_encoders,
    write_real_world_videos,
    write_video,
)
from vfe.decoding.video import check_decoder
from vfe.errors import VfeError

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from clip.model import CLIP  # noqa: E402

from vfe.backbones.base import Backbone  # noqa: E402
from vfe.data.datamodule import VideoDataModule  # noqa: E402
from vfe.output.writer import FeatureWriter  # noqa: E402

FPS = 25
# 85 frames at 25 fps with 2 s clips: one clip of 50 frames and a short last one of 35.
NUM_FRAMES = 85


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a 3.4 s video (2 clips) and, in a sub-folder, a 1 s video (1 clip)."""
    folder = tmp_path_factory.mktemp("videos")
    write_video(folder / "moving.mp4", NUM_FRAMES, FPS, seed=1)
    write_video(folder / "nested" / "short.mp4", 25, FPS, seed=2)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random CLIP ViT (32 px input, 32-d embedding) saved as a state dict."""
    torch.manual_seed(0)
    model = CLIP(
        embed_dim=32,
        image_resolution=32,
        vision_layers=2,
        vision_width=64,
        vision_patch_size=8,
        context_length=8,
        vocab_size=64,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=1,
    )
    path = tmp_path_factory.mktemp("weights") / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def pann_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random CNN14 weights in the official file's layout (`{"model": state_dict}`), each conv
    filter and each row of `fc1` centred, so that windows give distinct rows (plain random
    weights give rows at cosine 0.997 to each other). Skips without the audio extra."""
    # Never `import panns_inference`: its __init__ downloads AudioSet's label file.
    if importlib.util.find_spec("panns_inference") is None:
        pytest.skip("needs the audio extra")
    from vfe.backbones.pann import load_cnn14

    torch.manual_seed(0)
    model = load_cnn14("random")
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith(("conv1.weight", "conv2.weight")):
            state[key] = value - value.mean(dim=(1, 2, 3), keepdim=True)
        elif key == "fc1.weight":
            state[key] = value - value.mean(dim=1, keepdim=True)
    path = tmp_path_factory.mktemp("pann") / "Cnn14_random.pth"
    torch.save({"model": state}, path)
    return path


@pytest.fixture(scope="session")
def text_clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random CLIP with OpenAI's tokenizer geometry (77 tokens, 49,408 words), tiny towers."""
    torch.manual_seed(0)
    model = CLIP(32, 32, 2, 64, 8, 77, 49408, 64, 1, 1)
    path = tmp_path_factory.mktemp("weights") / "text_clip.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def slowfast_pyth_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random SlowFast R50 saved as a PyTorchVideo checkpoint: `{"model_state": ...}`."""
    from pytorchvideo.models.hub import slowfast_r50

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "slowfast_random.pyth"
    torch.save({"model_state": slowfast_r50(pretrained=False).state_dict()}, path)
    return path


def extract(
    model: Backbone,
    input_dir: Path,
    output_dir: Path,
    precision: str = "32-true",
    **data_options,
) -> FeatureWriter:
    """Run the real predict pipeline in this process (no worker processes unless asked)."""
    data_options.setdefault("num_workers", 0)
    writer = FeatureWriter(output_dir=output_dir)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        logger=False,
        callbacks=[writer],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    datamodule = VideoDataModule(input_dir=input_dir, output_dir=output_dir, **data_options)
    trainer.predict(model, datamodule=datamodule, return_predictions=False)
    return writer


@dataclass
class ReferenceDecode:
    """What a sequential FFmpeg decode presents: frames in display orientation, and each
    frame's time from the first, taken from the FFmpeg command line (`ffprobe`)."""

    frames: list[np.ndarray]  # (H, W, 3) uint8 each
    times: list[Fraction]  # seconds from the first frame
    duration: Fraction  # last time + last frame's duration

    def clip_frames(self, clip_len: Fraction) -> list[list[int]]:
        """The contract's clips: frames starting in [i*L, (i+1)*L); an empty window holds the
        frame on screen at its start. Written independently of `vfe.data.clip_grid`."""
        num_clips = math.floor(self.times[-1] / clip_len) + 1
        clips = []
        for i in range(num_clips):
            inside = [k for k, t in enumerate(self.times) if i * clip_len <= t < (i + 1) * clip_len]
            if not inside:
                inside = [max(k for k, t in enumerate(self.times) if t < i * clip_len)]
            clips.append(inside)
        return clips


def reference_decode(path: Path) -> ReferenceDecode:
    """PyAV's plain sequential decode (`container.decode`) for pixels, ffprobe for times."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = []
        for frame in container.decode(stream):
            array = frame.to_ndarray(format="rgb24")
            frames.append(np.rot90(array, k=frame.rotation // 90) if frame.rotation else array)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=time_base:frame=best_effort_timestamp,pkt_duration,duration", "-of", "json",
         str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    info = json.loads(probe.stdout)
    time_base = Fraction(info["streams"][0]["time_base"])
    ticks, durations = [], []
    for record in info["frames"]:
        duration = int(record.get("duration", record.get("pkt_duration", 0)))
        tick = record.get("best_effort_timestamp")
        if tick is None:  # the command line places such a frame after its predecessor
            tick = ticks[-1] + durations[-1]
        ticks.append(int(tick))
        durations.append(duration)
    assert len(ticks) == len(frames), (path, len(ticks), len(frames))
    times = [(tick - ticks[0]) * time_base for tick in ticks]
    return ReferenceDecode(frames, times, times[-1] + durations[-1] * time_base)


@pytest.fixture(scope="session")
def real_world_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The awkward files of `vfe.bench.synthetic.REAL_WORLD_VIDEOS` this ffmpeg can write."""
    if not ffmpeg_encoders():
        pytest.skip("needs the ffmpeg command line (apt-get install ffmpeg)")
    return write_real_world_videos(tmp_path_factory.mktemp("real_world"))


@pytest.fixture(scope="session")
def references(real_world_videos: dict[str, Path]) -> dict[str, ReferenceDecode]:
    return {name: reference_decode(path) for name, path in real_world_videos.items()}


# decoder -> file -> "exact" (every frame and time equal the reference) or how it goes wrong.
EXACT = "exact"
DECODER_RESULTS: dict[str, dict[str, str]] = {
    "pyav": dict.fromkeys(REAL_WORLD_VIDEOS, EXACT),
    "torchcodec": dict.fromkeys(REAL_WORLD_VIDEOS, EXACT),
    "decord": {
        **dict.fromkeys(REAL_WORLD_VIDEOS, EXACT),
        "edit_list_cut.mp4": "wrong frame count",  # shows the hidden pre-roll
        "broadcast.ts": "wrong frames",
        "xvid_bframes.avi": "wrong times",
        "av1.mp4": "cannot open",
        "program_stream.mpg": "wrong times",
    },
}


def decoder_available(decoder: str) -> bool:
    try:
        check_decoder(decoder)
    except VfeError:
        return False
    return True


def needs_a_process(args: tuple[str, ...]) -> bool:
    """Several ranks (DDP launches processes) need a real process; the rest runs in this one."""
    for flag, value in itertools.pairwise(args):
        if flag == "--trainer.devices" and value not in ("1", "auto"):
            return True
    return False


def run_vfe(
    *args: str, cwd: Path, env: dict[str, str] | None = None, process: bool = False
) -> subprocess.CompletedProcess:
    """`vfe predict ARGS` as a user runs it (`env`: added): in this process, with its exit
    status, stdout and stderr (a new interpreter adds ~5 s of imports per run); in a subprocess
    where the run needs a process of its own (`process`, or several ranks)."""
    if process or needs_a_process(args):
        return subprocess.run(
            [sys.executable, "-m", "vfe", "predict", *args],
            cwd=cwd,
            env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
            capture_output=True,
            text=True,
            timeout=600,
        )
    return run_in_process(["predict", *args], cwd, env)


def run_in_process(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`vfe ARGV` called in this process from `cwd`, with `env` added to the environment (and
    its PYTHONPATH to sys.path, for test models); modules the run imported from there are
    forgotten after it, so the next test's `test_models` is its own."""
    from vfe.cli import main

    saved_environ, saved_path, saved_cwd = dict(os.environ), list(sys.path), os.getcwd()
    modules_before = set(sys.modules)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    os.environ.update(env or {})
    sys.path[:0] = [p for p in (env or {}).get("PYTHONPATH", "").split(os.pathsep) if p]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_environ)
        sys.path[:] = saved_path
        for name in set(sys.modules) - modules_before:
            if name.split(".")[0] == "test_models":
                del sys.modules[name]
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two `(N, D)` arrays."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def stop_after_first_file(
    args: list[str], cwd: Path, output: Path, signum: int, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Start `args`, send `signum` once it has written its first .npz; (exit status, stderr)."""
    existing = len(list(output.glob("*.npz")))
    process = subprocess.Popen(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    deadline = time.monotonic() + 300
    while len(list(output.glob("*.npz"))) == existing and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr.decode()


def reference_image_features(
    video: Path,
    preprocess: Callable[[Image.Image], torch.Tensor],
    encode: Callable[[torch.Tensor], torch.Tensor],
    clip_len: float = 2.0,
) -> np.ndarray:
    """An image model's own pipeline on what a sequential FFmpeg decode presents: each frame as
    a PIL image through the library's `preprocess`, `encode`d, averaged over each contract
    window's frames -> `(num_clips, D)`."""
    decoded = reference_decode(video)
    inputs = torch.stack(
        [preprocess(Image.fromarray(np.ascontiguousarray(f))) for f in decoded.frames]
    )
    with torch.no_grad():
        per_frame = torch.cat([encode(chunk) for chunk in inputs.split(16)])
    clips = decoded.clip_frames(Fraction(str(clip_len)))
    return np.stack([per_frame[frames].float().mean(0).numpy() for frames in clips])
