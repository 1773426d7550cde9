"""The data path alone on one core (no model, no Lightning): PyAV's plain decode, decode + RGB,
and vfe's dataset with CLIP's and SlowFast's inputs on a 10-s 720p video (docs/benchmarks.md),
converted in the worker (`--data.convert_on workers`) or handed over as decoded pictures
(`model`), and what the model side's conversion costs when that device is this CPU core.

Run twice: `python docs/scripts/data_path_one_core.py [720p|240p]` (default 720p).
"""

import sys
import time
from pathlib import Path

import av
import torch
from torchvision.transforms import InterpolationMode

from vfe.bench.synthetic import write_video
from vfe.data.dataset import VideoClipDataset
from vfe.data.input_spec import InputSpec
from vfe.data.paths import find_videos
from vfe.data.transforms import model_samples

SIZES = {"720p": (720, 1280), "240p": (240, 320)}  # as `vfe bench`'s sets
SIZE = sys.argv[1] if len(sys.argv) > 1 else "720p"
VIDEO = Path(f"/tmp/vfe-data-path/{SIZE}/video.mp4")
NUM_FRAMES = 250
CLIP_INPUTS = InputSpec(None, 224, 224, InterpolationMode.BICUBIC, True, (0.5,) * 3, (0.5,) * 3, 32)
SLOWFAST_INPUTS = InputSpec(
    32, 256, 256, InterpolationMode.BILINEAR, False, (0.5,) * 3, (0.5,) * 3, 8, True
)


def decode_rate(to_rgb: bool) -> float:
    """Frames per second of PyAV's sequential decode on one thread (and RGB conversion)."""
    started, count = time.perf_counter(), 0
    with av.open(str(VIDEO)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            if to_rgb:
                frame.to_ndarray(format="rgb24")
            count += 1
    return count / (time.perf_counter() - started)


def dataset_rate(spec: InputSpec, convert_on: str = "workers") -> float:
    """Decoded frames per second through vfe's dataset, producing `spec`'s samples."""
    dataset = VideoClipDataset(
        find_videos(VIDEO.parent),
        {"m": spec},
        2.0,
        {"m": spec.default_batch_size},
        convert_on=convert_on,
    )
    started = time.perf_counter()
    for _ in dataset:
        pass
    return NUM_FRAMES / (time.perf_counter() - started)


def worker_rate(spec: InputSpec, convert_on: str) -> float:
    """Frames per second reaching the main process from one DataLoader worker (one core
    decoding, and the hand-over through shared memory), converted nowhere after."""
    from torch.utils.data import DataLoader

    dataset = VideoClipDataset(
        find_videos(VIDEO.parent) * 4,  # 1,000 frames: the worker's start is a small part
        {"m": spec},
        2.0,
        {"m": spec.default_batch_size},
        convert_on=convert_on,
    )
    loader = DataLoader(dataset, batch_size=None, num_workers=1)
    started = time.perf_counter()
    for _ in loader:
        pass
    return 4 * NUM_FRAMES / (time.perf_counter() - started)


def model_side_rate(spec: InputSpec) -> float:
    """Frames per second of the model side's conversion and resize on this CPU core."""
    dataset = VideoClipDataset(
        find_videos(VIDEO.parent),
        {"m": spec},
        2.0,
        {"m": spec.default_batch_size},
        convert_on="model",
    )
    batches = [batch["models"]["m"] for batch in dataset if batch["models"]]
    started, count = time.perf_counter(), 0
    for samples in batches:
        pixels = model_samples(samples["pixels"], samples.get("layouts"), spec)
        count += pixels.shape[0] * (pixels.shape[2] if pixels.dim() == 5 else 1)
    return count / (time.perf_counter() - started)


def main() -> None:
    torch.set_num_threads(1)
    if not VIDEO.exists():
        write_video(VIDEO, NUM_FRAMES, 25, *SIZES[SIZE], seed=3)
    print(f"plain decode {decode_rate(False):.0f} frames/s")
    print(f"decode + rgb24 {decode_rate(True):.0f} frames/s")
    print(f"dataset, CLIP's inputs {dataset_rate(CLIP_INPUTS):.0f} frames/s")
    print(f"dataset, SlowFast's inputs {dataset_rate(SLOWFAST_INPUTS):.0f} frames/s")
    print(f"dataset, decoded pictures out {dataset_rate(CLIP_INPUTS, 'model'):.0f} frames/s")
    for convert_on in ("workers", "model"):
        rate = worker_rate(CLIP_INPUTS, convert_on)
        print(f"one worker to the main process, CLIP, convert_on {convert_on}: {rate:.0f} frames/s")
    print(f"model side on this core, CLIP's inputs {model_side_rate(CLIP_INPUTS):.0f} frames/s")


if __name__ == "__main__":
    main()
