"""`vfe bench --sparse`: what decoding only the frames used saves (`vfe.decoding.sparse`).

For each file (720p 30 fps H.264 with B-frames, `-bf 3`, a keyframe every 2 s and every 250
frames) and each sampling (CLIP ViT-B/32's input: the middle frame of each 2-s clip, 8 frames
spread over each clip, every frame), in one process with one FFmpeg thread: video-seconds per
second of vfe's data path (decode, pick, convert, resize to the backbone's input, batch) with
sparse decoding and with every frame decoded, each as a ratio to PyAV's plain sequential decode
of the same file (`container.decode`, nothing converted) timed in the same run. The model is
left out: its cost per sample does not depend on how frames are decoded (the pipeline rows of
`vfe bench` have it)."""

import subprocess
import time
from pathlib import Path
from typing import Any

import av

CLIP_LEN_SECONDS = 2.0
# name -> the keyframe interval in frames (`-g`)
SPARSE_FILES = {"720p_bf3_key2s.mp4": 60, "720p_bf3_key250.mp4": 250}


def make_sparse_videos(folder: Path, seconds: float) -> list[Path]:
    """The benchmark's files (made once: kept in `folder`, named by their length)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, keyframe_interval in SPARSE_FILES.items():
        path = folder / f"{Path(name).stem}_{seconds:g}s.mp4"
        if not path.exists():
            subprocess.run(
                ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                 "testsrc2=size=1280x720:rate=30", "-t", str(seconds), "-c:v", "libx264",
                 "-bf", "3", "-g", str(keyframe_interval), "-pix_fmt", "yuv420p", str(path)],
                check=True,
            )  # fmt: skip
        paths.append(path)
    return paths


def pyav_full_decode_seconds(path: Path) -> float:
    """Wall seconds of PyAV's plain sequential decode of every frame, one thread."""
    started = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        for _ in container.decode(stream):
            pass
    return time.perf_counter() - started


def vfe_data_path_seconds(path: Path, spec: Any, sparse_decode: bool) -> tuple[float, int]:
    """Wall seconds of vfe's data path over the file, and the samples it gave."""
    from vfe.data.dataset import VideoClipDataset
    from vfe.data.paths import VideoEntry

    entry = VideoEntry(path, path.name, path.stat().st_size)
    dataset = VideoClipDataset(
        [entry], {"m": spec}, CLIP_LEN_SECONDS, {"m": spec.default_batch_size},
        decode_threads=1, sparse_decode=sparse_decode,
    )  # fmt: skip
    started = time.perf_counter()
    samples = sum(len(b["models"]["m"]["clip_index"]) for b in dataset if b["models"])
    return time.perf_counter() - started, samples


def sampling_specs() -> dict[str, Any]:
    """CLIP ViT-B/32's input per sampling (random weights: only its InputSpec is used)."""
    from vfe.backbones.openai_clip import CLIPBackbone

    samplings = {"middle": "middle", "8 per clip": 8, "every frame": None}
    return {
        name: CLIPBackbone(arch="ViT-B/32", weights="random", frames_per_clip=value).input_spec
        for name, value in samplings.items()
    }


def run_sparse_bench(folder: Path, seconds: float, repeats: int = 2) -> list[dict[str, Any]]:
    """One row per file, sampling and repeat (see the module doc)."""
    rows = []
    specs = sampling_specs()
    for path in make_sparse_videos(folder, seconds):
        for repeat in range(repeats):
            for sampling, spec in specs.items():
                baseline = pyav_full_decode_seconds(path)
                row = {"file": path.name, "sampling": sampling, "repeat": repeat,
                       "seconds": seconds, "pyav_full_decode_seconds": baseline}  # fmt: skip
                modes = (True, False) if sampling != "every frame" else (True,)
                for sparse_decode in modes:
                    wall, samples = vfe_data_path_seconds(path, spec, sparse_decode)
                    key = "sparse" if sparse_decode else "sequential"
                    row[f"{key}_seconds"] = wall
                    row[f"{key}_ratio_to_pyav"] = baseline / wall
                    row["samples"] = samples
                rows.append(row)
                print(
                    f"{path.name} {sampling}: PyAV full decode {seconds / baseline:.1f} "
                    f"video-s/s; vfe " + ", ".join(
                        f"{key} {row[f'{key}_ratio_to_pyav']:.2f}x"
                        for key in ("sparse", "sequential") if f"{key}_seconds" in row
                    ),
                    flush=True,
                )  # fmt: skip
    return rows
