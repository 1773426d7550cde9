"""`vfe bench`: end-to-end speed per backbone, its two ceilings, and the straightforward baseline.

On a fixed set of generated videos (one set per resolution) and random weights, each measurement
(`vfe.bench.measure`) runs in its own process (clean peak memory, thread settings and caches):

- pipeline: the real `vfe predict` path (Trainer.predict, workers, writer), with time per stage;
- decode ceiling: the same dataset and DataLoader workers (decode + resize), no model;
- model ceiling: the backbone's predict_step on ready uint8 tensors, no decoding;
- baseline: the approach of the original scripts: one video at a time, no workers, fp32, a
  round(clip_len * fps) frame grid, full-resolution float preprocessing.

Efficiency = pipeline video-seconds/s ÷ min(decode ceiling, model ceiling).
"""

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from vfe.backbones.registry import MODELS
from vfe.bench.measure import CLIP_LEN_SECONDS, build_backbone
from vfe.data.clip_grid import clip_length_fraction
from vfe.decoding.video import DECODERS, DEFAULT_DECODER
from vfe.errors import VfeError

VIDEO_SETS = {"720p": (720, 1280), "240p": (240, 320)}
VIDEOS_PER_SET = 2  # default of --videos_per_set
FPS = 30
# Dense bf16 tensor-core peaks (TFLOP/s) for MFU; fp32 runs are compared with the same peak.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def make_videos(videos_dir: Path, seconds: float, per_set: int = VIDEOS_PER_SET) -> dict[str, Path]:
    """Generate (once) `per_set` H.264 videos per resolution; returns set -> folder."""
    try:
        from vfe.bench.synthetic import write_video
    except ImportError as error:
        message = f"vfe bench needs PyAV and matplotlib: pip install -e '.[bench]' ({error})"
        raise VfeError(message) from error

    folders = {}
    for name, (height, width) in VIDEO_SETS.items():
        folder = videos_dir / f"{name}-{seconds:g}s" / f"{per_set}-videos"
        for index in range(per_set):
            path = folder / f"video{index}.mp4"
            if not path.exists():
                partial = path.with_suffix(".partial.mp4")
                write_video(partial, round(seconds * FPS), FPS, height, width, seed=index)
                partial.rename(path)
        folders[name] = folder
    return folders


def video_workload(folder: Path, frames_per_clip: int | None) -> dict[str, float]:
    """Duration, clips, decoded frames and model samples for the (constant-rate) videos in
    `folder`, from their headers."""
    import av

    from vfe.data.paths import find_videos

    seconds = clips = frames = samples = 0.0
    clip_len = clip_length_fraction(CLIP_LEN_SECONDS)
    for entry in find_videos(folder):
        with av.open(str(entry.path)) as container:
            stream = container.streams.video[0]
            num_frames, fps = stream.frames, Fraction(stream.average_rate)
        num_clips = math.floor((num_frames - 1) / fps / clip_len) + 1
        seconds += float(num_frames / fps)
        clips += num_clips
        frames += num_frames  # every frame is decoded, whatever the backbone samples
        samples += num_frames if frames_per_clip is None else num_clips
    return {"video_seconds": seconds, "clips": clips, "frames": frames, "samples": samples}


def _run_measurement(options: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, "-m", "vfe.bench.measure", json.dumps(options)]
    completed = subprocess.run(command, capture_output=True, text=True)
    for line in completed.stdout.splitlines():
        if line.startswith("VFE_BENCH_RESULT "):
            return json.loads(line.removeprefix("VFE_BENCH_RESULT "))
    raise VfeError(f"benchmark step {options['kind']} failed:\n{completed.stderr[-3000:]}")


class GpuUtilisation:
    """Mean GPU utilisation (%) over a `with` block, sampled by nvidia-smi; None without one."""

    def __init__(self) -> None:
        self.mean_percent: float | None = None
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "GpuUtilisation":
        if torch.cuda.is_available():
            with contextlib.suppress(OSError):
                self._process = subprocess.Popen(
                    ["nvidia-smi", "--query-gpu=utilization.gpu",
                     "--format=csv,noheader,nounits", "-lms", "200"],
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is None:
            return
        self._process.terminate()
        output, _ = self._process.communicate()
        samples = [float(v) for v in output.split() if v.replace(".", "", 1).isdigit()]
        self.mean_percent = round(sum(samples) / len(samples), 1) if samples else None


def run_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    folders = make_videos(Path(args.videos_dir).expanduser(), args.seconds, args.videos_per_set)
    rows = []
    for set_name in args.sets:
        folder = folders[set_name]
        for model_name in args.models:
            frames_per_clip = build_backbone(model_name).input_spec.frames_per_clip
            work = video_workload(folder, frames_per_clip)
            for precision in args.precision:
                options = {
                    "model": model_name,
                    "videos": str(folder),
                    "precision": precision,
                    "device": args.device,
                    "num_workers": args.num_workers,
                    "batch_size": args.batch_size,
                    "decoder": args.decoder,
                    "convert_on": args.convert_on,
                    "decode_device": args.decode_device,
                    "cudnn_benchmark": args.cudnn_benchmark,
                    "decode_streams": args.decode_streams,
                    "min_segment_seconds": args.min_segment_seconds,
                    "samples": work["samples"],
                }
                row = _benchmark_row(options, work, set_name, args)
                rows.append(row)
                _print_row(row)
                # Written after every row, so a run cut short still leaves its figures.
                report = {"machine": _machine(), "rows": rows}
                Path(args.output_json).write_text(json.dumps(report, indent=2))
    return rows


def _machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }


def _benchmark_row(
    options: dict[str, Any], work: dict[str, float], set_name: str, args: argparse.Namespace
) -> dict[str, Any]:
    with GpuUtilisation() as utilisation:
        pipeline = _run_measurement({**options, "kind": "pipeline"})
    decode = _run_measurement({**options, "kind": "decode"})
    model = _run_measurement({**options, "kind": "model"})
    seconds = work["video_seconds"]
    speed = seconds / pipeline["wall_seconds"]
    decode_ceiling = seconds / decode["wall_seconds"]
    model_ceiling = seconds * model["samples"] / work["samples"] / model["wall_seconds"]
    row = {
        "set": set_name,
        "model": options["model"],
        "precision": options["precision"],
        "convert_on": options["convert_on"],
        "decode_device": options["decode_device"],
        "cudnn_benchmark": options["cudnn_benchmark"],
        "decode_streams": options["decode_streams"],
        "device": pipeline["device"],
        "video_seconds": round(seconds, 2),
        "clips": int(work["clips"]),
        "video_seconds_per_second": round(speed, 3),
        "clips_per_second": round(work["clips"] / pipeline["wall_seconds"], 3),
        "decoded_frames_per_second": round(work["frames"] / pipeline["wall_seconds"], 1),
        "peak_rss_mb": pipeline["peak_rss_mb"],
        "worker_peak_rss_mb": pipeline["worker_peak_rss_mb"],
        "stage_seconds": pipeline["stage_seconds"],
        "wall_seconds": round(pipeline["wall_seconds"], 2),
        "decode_ceiling_video_seconds_per_second": round(decode_ceiling, 3),
        "model_ceiling_video_seconds_per_second": round(model_ceiling, 3),
        "efficiency": round(speed / min(decode_ceiling, model_ceiling), 3),
        "videos_planned": pipeline["videos_planned"],
        "videos_written": pipeline["videos_written"],
        "videos_failed": pipeline["videos_failed"],
        "videos_not_on_nvdec": pipeline["videos_not_on_nvdec"],
    }
    if pipeline["steady_seconds"] > 0:  # after the first batch: start-up (model, workers) left out
        share = pipeline["steady_samples"] / work["samples"]
        row["steady_video_seconds_per_second"] = round(
            seconds * share / pipeline["steady_seconds"], 3
        )
    row["problems"] = row_problems(row)
    if "gpu_peak_mb" in pipeline:
        row["gpu_peak_mb"] = pipeline["gpu_peak_mb"]
        row["gpu_utilisation_percent"] = utilisation.mean_percent
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in pipeline["gpu_name"]), None)
        if peak:
            achieved = work["samples"] * model["flops_per_sample"]
            row["mfu"] = round(achieved / pipeline["wall_seconds"] / (peak * 1e12), 4)
    if not args.no_baseline and options["precision"] == "32-true":
        baseline = _run_measurement({**options, "kind": "baseline"})
        row["baseline_video_seconds_per_second"] = round(seconds / baseline["wall_seconds"], 3)
        row["speedup_over_baseline"] = round(baseline["wall_seconds"] / pipeline["wall_seconds"], 2)
    return row


def row_problems(row: dict[str, Any]) -> list[str]:
    """What makes a row's figures not what they claim: videos not written, failures, or, on
    an NVDEC row, videos FFmpeg decoded in software."""
    problems = []
    if row["videos_written"] < row["videos_planned"]:
        problems.append(f"{row['videos_written']} of {row['videos_planned']} videos written")
    if row["videos_failed"]:
        problems.append(f"{row['videos_failed']} video(s) failed")
    if row["decode_device"] == "cuda" and row["videos_not_on_nvdec"]:
        problems.append(f"{row['videos_not_on_nvdec']} video(s) decoded in software, not NVDEC")
    return problems


def _print_row(row: dict[str, Any]) -> None:
    print(
        f"{row['set']:>5} {row['model']:>8} {row['precision']:>10}: "
        f"{row['video_seconds_per_second']:.2f} video-s/s, {row['clips_per_second']:.2f} clips/s, "
        f"{row['decoded_frames_per_second']:.0f} frames/s, efficiency {row['efficiency']:.2f} "
        f"(decode ceiling {row['decode_ceiling_video_seconds_per_second']:.2f}, model ceiling "
        f"{row['model_ceiling_video_seconds_per_second']:.2f}), "
        f"speed-up over baseline {row.get('speedup_over_baseline', '-')}, "
        f"peak RSS {row['peak_rss_mb']:.0f} MB, stages {row['stage_seconds']}, after warm-up "
        f"{row.get('steady_video_seconds_per_second', '-')} video-s/s",
        flush=True,
    )
    for problem in row["problems"]:
        print(f"vfe bench: PROBLEM in this row: {problem}", flush=True)


def write_chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\n{r['set']}\n{r['precision']}" for r in rows]
    series = {
        "vfe pipeline": [r["video_seconds_per_second"] for r in rows],
        "decode ceiling": [r["decode_ceiling_video_seconds_per_second"] for r in rows],
        "model ceiling": [r["model_ceiling_video_seconds_per_second"] for r in rows],
        "baseline": [r.get("baseline_video_seconds_per_second", 0.0) for r in rows],
    }
    figure, axes = plt.subplots(figsize=(max(6, 1.8 * len(rows)), 4.5))
    width = 0.8 / len(series)
    for offset, (name, values) in enumerate(series.items()):
        positions = [i + (offset - 1.5) * width for i in range(len(rows))]
        axes.bar(positions, values, width, label=name)
    axes.set_xticks(range(len(rows)), labels, fontsize=8)
    axes.set_yscale("log")
    axes.set_ylabel("video seconds per wall second (log)")
    axes.set_title("vfe bench (random weights)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def model_choice(value: str) -> str:
    """A `--models` entry: registered names, each optionally `:arch`, joined by commas."""
    for member in value.split(","):
        name = member.partition(":")[0]
        if name not in MODELS:
            raise argparse.ArgumentTypeError(
                f"{name!r} is not a backbone; choose from {', '.join(MODELS)}"
            )
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vfe bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["clip", "slowfast"],
        type=model_choice,
        help=f"backbones ({', '.join(MODELS)}), NAME:ARCH for an architecture "
        "(pytorchvideo:x3d_m), A,B for several from one decode",
    )
    parser.add_argument("--sets", nargs="+", default=list(VIDEO_SETS), choices=list(VIDEO_SETS))
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each video")
    parser.add_argument(
        "--videos_per_set",
        type=int,
        default=VIDEOS_PER_SET,
        help="videos per resolution (enough for every worker and decode stream)",
    )
    parser.add_argument(
        "--min_segment_seconds",
        type=float,
        default=30.0,
        help="as --data.min_segment_seconds: shorter lets long videos split over more workers",
    )
    parser.add_argument(
        "--make_videos_only",
        action="store_true",
        help="generate the --sets videos and stop (an untimed step before timed rows)",
    )
    parser.add_argument("--videos_dir", default="~/.cache/vfe/bench-videos")
    parser.add_argument("--precision", nargs="+", default=["32-true"],
                        choices=["32-true", "bf16-mixed", "16-mixed"])  # fmt: skip
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--decoder", default=DEFAULT_DECODER, choices=list(DECODERS))
    parser.add_argument(
        "--convert_on",
        default="workers",
        choices=["workers", "model"],
        help="where frames are converted to RGB and resized (as --data.convert_on)",
    )
    parser.add_argument(
        "--decode_device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cuda: NVDEC in the main process (as --data.decode_device; --num_workers 0)",
    )
    parser.add_argument(
        "--decode_streams",
        type=int,
        default=1,
        help="with --num_workers 0: streams decoded at once in threads (--data.decode_streams)",
    )
    parser.add_argument(
        "--cudnn_benchmark",
        action="store_true",
        help="let cuDNN time its algorithms for each input shape (Trainer(benchmark=True))",
    )
    parser.add_argument("--no_baseline", action="store_true")
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="one --seconds long 720p video, no model, with each --workers",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="peak RSS per process for --memory_cases, no model",
    )
    parser.add_argument(
        "--memory_cases",
        nargs="+",
        default=["length"],
        choices=["length", "gap", "4k"],
        help="length: 1- vs 60-minute 240p video; gap: a 40-minute timestamp gap at 1080p; "
        "4k: 4K60 with 10-s clips",
    )
    parser.add_argument(
        "--decode_threads",
        type=int,
        default=None,
        help="FFmpeg threads per worker for --scaling/--memory/--multi (default: vfe's)",
    )
    parser.add_argument(
        "--multi",
        action="store_true",
        help="--models one at a time vs all from one decode, on --sets",
    )
    parser.add_argument(
        "--workers",
        nargs="+",
        type=int,
        default=[1, 2],
        help="worker counts for --scaling (--memory uses the last)",
    )
    parser.add_argument(
        "--sparse",
        action="store_true",
        help="sparse decoding vs every frame vs PyAV's plain decode, on --seconds long 720p "
        "files with B-frames (vfe.bench.sparse)",
    )
    parser.add_argument("--output_json", default="bench.json")
    parser.add_argument("--output_png", default="bench.png")
    args = parser.parse_args(argv)
    if args.sparse:
        from vfe.bench.sparse import run_sparse_bench

        folder = Path(args.videos_dir).expanduser() / "sparse"
        rows = run_sparse_bench(folder, args.seconds)
        Path(args.output_json).write_text(
            json.dumps({"machine": _machine(), "rows": rows}, indent=2)
        )
        print(f"vfe bench: results in {args.output_json}")
        return
    if args.make_videos_only:
        folders = make_videos(Path(args.videos_dir).expanduser(), args.seconds, args.videos_per_set)
        for set_name in args.sets:
            print(f"vfe bench: videos in {folders[set_name]}")
        return
    if args.scaling or args.memory or args.multi:
        from vfe.bench.scaling import run_memory, run_multi, run_scaling

        try:
            rows = run_scaling(args, _run_measurement) if args.scaling else []
            rows += run_memory(args, _run_measurement) if args.memory else []
            if args.multi:
                folders = make_videos(Path(args.videos_dir).expanduser(), args.seconds)
                for set_name in args.sets:
                    workload = lambda folder: video_workload(folder, None)  # noqa: E731
                    rows += run_multi(args, folders[set_name], workload, _run_measurement)
        except VfeError as error:
            print(f"vfe bench: error: {error}", file=sys.stderr)
            sys.exit(2)
        Path(args.output_json).write_text(
            json.dumps({"machine": _machine(), "rows": rows}, indent=2)
        )
        print(f"vfe bench: results in {args.output_json}")
        return
    try:
        rows = run_benchmark(args)
    except VfeError as error:
        print(f"vfe bench: error: {error}", file=sys.stderr)
        sys.exit(2)
    write_chart(rows, Path(args.output_png))
    print(f"vfe bench: results in {args.output_json} and {args.output_png}")
    if any(row["problems"] for row in rows):
        sys.exit(1)  # the figures stand, but a row did not do what it claims


if __name__ == "__main__":
    main()
