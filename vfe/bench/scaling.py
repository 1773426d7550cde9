"""`vfe bench --scaling`, `--memory` and `--multi`: how the data path uses workers, memory and
one decode for several backbones.

- scaling: one long video through the real pipeline with 1, 2, ... workers: video-s/s and the
  speed-up over one worker (a long video is split into segments, one per worker);
- memory: peak RSS of the main process and of the largest worker for a 1-minute and a
  60-minute video (it must not grow with video length), and for the extremes real files hold:
  a 40-minute timestamp gap in a 1080p video (2,400 s of empty windows on one frame) and 4K60
  with 10-s clips (600 frames per clip);
- multi: the real backbones (random weights) one at a time and all from one decode, on the
  benchmark set: wall time, frames decoded and decode time, and what the shared decode saves.

Scaling and memory use a pass-through backbone (no model cost), so decoding is all there is
to see.
"""

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

import torch

from vfe.backbones.base import Backbone
from vfe.data.input_spec import InputSpec
from vfe.errors import VfeError

SCALING_RESOLUTION = (720, 1280)
MEMORY_RESOLUTION = (240, 320)
MEMORY_MINUTES = (1, 60)
MEMORY_CASES = ("length", "gap", "4k")
GAP_RESOLUTION, GAP_SECONDS = (1080, 1920), 2400
UHD_RESOLUTION, UHD_FPS, UHD_SECONDS, UHD_CLIP_LEN = (2160, 3840), 60, 20, 10.0
FPS = 30


class PassThroughBackbone(Backbone):
    """Takes another backbone's inputs and returns zero features at no cost."""

    name = "passthrough"

    def __init__(self, spec: InputSpec, feature_dim: int, name: str = "passthrough") -> None:
        super().__init__()
        self._spec, self._feature_dim = spec, feature_dim
        self.name = name  # as the backbone it stands in for

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    @property
    def feature_dim(self) -> int:
        return self._feature_dim

    def weights_record(self) -> dict[str, str]:
        return {"arch": "passthrough", "weights": "none", "weights_sha256": "none"}

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.zeros(pixels.shape[0], self._feature_dim, device=pixels.device)

    def encode(self, samples: torch.Tensor) -> torch.Tensor:
        return torch.zeros(samples.shape[0], self._feature_dim, device=samples.device)


def make_long_video(folder: Path, seconds: float, size: tuple[int, int], fps: int = FPS) -> Path:
    """One H.264 video (GOP 2 s, as cameras and uploads typically have), made once."""
    height, width = size
    path = folder / f"{height}p{fps}-{seconds:g}s" / "long.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.mp4")
        command = [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
            f"testsrc2=size={width}x{height}:rate={fps}", "-t", f"{seconds:g}",
            "-c:v", "libx264", "-preset", "ultrafast", "-g", str(2 * fps),
            "-pix_fmt", "yuv420p", str(partial),
        ]  # fmt: skip
        try:
            subprocess.run(command, check=True)
        except (OSError, subprocess.CalledProcessError) as error:
            message = f"vfe bench --scaling/--memory need the ffmpeg command ({error})"
            raise VfeError(message) from error
        partial.rename(path)
    return path


def run_scaling(args: argparse.Namespace, measure: Any) -> list[dict[str, Any]]:
    """Rows of video-s/s for each model's inputs and worker count, on one long video."""
    video = make_long_video(Path(args.videos_dir).expanduser(), args.seconds, SCALING_RESOLUTION)
    rows = []
    for model_name in args.models:
        first = None
        for num_workers in args.workers:
            result = measure(_options(args, model_name, video.parent, num_workers))
            speed = args.seconds / result["wall_seconds"]
            first = first or speed
            row = {
                "kind": "scaling",
                "model_inputs": model_name,
                "video": f"1 x {args.seconds:g} s {SCALING_RESOLUTION[0]}p",
                "num_workers": num_workers,
                "video_seconds_per_second": round(speed, 2),
                "speedup_over_first": round(speed / first, 2),
                "peak_rss_mb": result["peak_rss_mb"],
                "worker_peak_rss_mb": result["worker_peak_rss_mb"],
            }
            print(json.dumps(row))
            rows.append(row)
    return rows


def make_gap_video(folder: Path) -> Path:
    """1080p: 10 frames, a 40-minute gap (a paused screen recording, a motion-triggered
    camera), 10 frames; made once."""
    from vfe.bench.synthetic import write_video

    height, width = GAP_RESOLUTION
    path = folder / f"gap-{height}p-{GAP_SECONDS}s" / "gap.mp4"
    if not path.exists():
        durations = [1] * 9 + [GAP_SECONDS * 10] + [1] * 10  # ticks of 1/10 s
        write_video(path, 20, fps=10, height=height, width=width, frame_durations=durations)
    return path


def run_memory(args: argparse.Namespace, measure: Any) -> list[dict[str, Any]]:
    """Peak RSS per process for each of `args.memory_cases`, with workers."""
    folder = Path(args.videos_dir).expanduser()
    runs = []  # (case, description, video, clip length)
    if "length" in args.memory_cases:
        for minutes in MEMORY_MINUTES:
            video = make_long_video(folder, minutes * 60, MEMORY_RESOLUTION)
            runs.append(("length", f"1 x {minutes} min {MEMORY_RESOLUTION[0]}p", video, 2.0))
    if "gap" in args.memory_cases:
        video = make_gap_video(folder)
        description = f"{GAP_RESOLUTION[0]}p, {GAP_SECONDS // 60}-min timestamp gap"
        runs.append(("gap", description, video, 2.0))
    if "4k" in args.memory_cases:
        video = make_long_video(folder, UHD_SECONDS, UHD_RESOLUTION, UHD_FPS)
        description = f"{UHD_RESOLUTION[0]}p{UHD_FPS} {UHD_SECONDS} s, {UHD_CLIP_LEN:g}-s clips"
        runs.append(("4k", description, video, UHD_CLIP_LEN))
    rows = []
    for model_name in args.models:
        for case, description, video, clip_len in runs:
            num_workers = args.workers[-1]
            options = _options(args, model_name, video.parent, num_workers)
            result = measure({**options, "clip_len": clip_len})
            row = {
                "kind": "memory",
                "case": case,
                "model_inputs": model_name,
                "video": description,
                "clip_len": clip_len,
                "num_workers": num_workers,
                "wall_seconds": round(result["wall_seconds"], 1),
                "peak_rss_mb": result["peak_rss_mb"],
                "worker_peak_rss_mb": result["worker_peak_rss_mb"],
            }
            print(json.dumps(row))
            rows.append(row)
    return rows


def _options(args: argparse.Namespace, model_name: str, folder: Path, workers: int) -> dict:
    return {
        "kind": "pipeline",
        "passthrough": True,
        "model": model_name,
        "videos": str(folder),
        "precision": "32-true",
        "device": "cpu",
        "num_workers": workers,
        "batch_size": args.batch_size,
        "decoder": args.decoder,
        "convert_on": args.convert_on,
        "min_segment_seconds": 30.0,
        "decode_threads": args.decode_threads,
    }


def run_multi(args: argparse.Namespace, folder: Path, workload: Any, measure: Any) -> list[dict]:
    """Each of `args.models` alone, then all of them from one decode, on the videos in
    `folder`; `workload(folder)` gives the set's frames."""
    frames = workload(folder)["frames"]
    runs = [*args.models, ",".join(args.models)]
    rows = []
    for model_name in runs:
        options = _options(args, model_name, folder, args.workers[-1])
        # The data path alone (pass-through backbones with the real InputSpecs), then with
        # the real backbones.
        data_only = measure(options)
        result = measure({**options, "passthrough": False, "precision": args.precision[0]})
        row = {
            "kind": "multi",
            "models": model_name,
            "videos": str(folder.name),
            "frames_decoded": int(frames),
            "wall_seconds": round(result["wall_seconds"], 1),
            "data_path_seconds": round(data_only["wall_seconds"], 1),
        }
        print(json.dumps(row))
        rows.append(row)
    singles, together = rows[:-1], rows[-1]
    together["frames_decoded_by_single_runs"] = sum(r["frames_decoded"] for r in singles)
    for key in ("wall_seconds", "data_path_seconds"):
        saved = sum(r[key] for r in singles) - together[key]
        together[f"{key}_saved"] = round(saved, 1)
    print(json.dumps(together))
    return rows
