"""The data path alone on one core (no model, no Lightning): PyAV's plain decode, decode + RGB,
and vfe's dataset with CLIP's and SlowFast's inputs on a 10-s 720p video (docs/benchmarks.md).

Run twice: `python docs/scripts/data_path_one_core.py`.
"""

import time
from pathlib import Path

import av
import torch
from torchvision.transforms import InterpolationMode

from vfe.bench.synthetic import write_video
from vfe.data.dataset import VideoClipDataset
from vfe.data.input_spec import InputSpec
from vfe.data.paths import find_videos

VIDEO = Path("/tmp/vfe-data-path/720.mp4")
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


def dataset_rate(spec: InputSpec) -> float:
    """Decoded frames per second through vfe's dataset, producing `spec`'s samples."""
    dataset = VideoClipDataset(
        find_videos(VIDEO.parent), {"m": spec}, 2.0, {"m": spec.default_batch_size}
    )
    started = time.perf_counter()
    for _ in dataset:
        pass
    return NUM_FRAMES / (time.perf_counter() - started)


def main() -> None:
    torch.set_num_threads(1)
    if not VIDEO.exists():
        write_video(VIDEO, NUM_FRAMES, 25, 720, 1280, seed=3)
    print(f"plain decode {decode_rate(False):.0f} frames/s")
    print(f"decode + rgb24 {decode_rate(True):.0f} frames/s")
    print(f"dataset, CLIP's inputs {dataset_rate(CLIP_INPUTS):.0f} frames/s")
    print(f"dataset, SlowFast's inputs {dataset_rate(SLOWFAST_INPUTS):.0f} frames/s")


if __name__ == "__main__":
    main()
