"""`vfe bench`: end-to-end speed per backbone, its two ceilings, and the straightforward baseline.

On a fixed set of generated videos (one set per resolution) and random weights, each measurement
runs in its own process (clean peak memory, thread settings and caches):

- pipeline: the real `vfe predict` path (Trainer.predict, workers, writer), with time per stage;
- decode ceiling: the same dataset and DataLoader workers (decode + resize), no model;
- model ceiling: the backbone's predict_step on ready uint8 tensors, no decoding;
- baseline: the approach of the original scripts: one video at a time, no workers, fp32,
  per-frame PIL preprocessing (CLIP) or full-resolution float transforms (SlowFast).

Efficiency = pipeline video-seconds/s ÷ min(decode ceiling, model ceiling).
"""

import argparse
import contextlib
import functools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from vfe.clip_grid import clip_length_fraction
from vfe.errors import VfeError
from vfe.registry import MODELS
from vfe.video import DECODERS, DEFAULT_DECODER

VIDEO_SETS = {"720p": (720, 1280), "240p": (240, 320)}
VIDEOS_PER_SET = 2
FPS = 30
CLIP_LEN_SECONDS = 2.0
# Dense bf16 tensor-core peaks (TFLOP/s) for MFU; fp32 runs are compared with the same peak.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
# Forward FLOPs per sample: CLIP ViT-B/32 per 224² frame, SlowFast R50 per 32-frame 256² clip.
GFLOP_PER_SAMPLE = {"clip": 8.8, "slowfast": 131.0}


def make_videos(videos_dir: Path, seconds: float) -> dict[str, Path]:
    """Generate (once) `VIDEOS_PER_SET` H.264 videos per resolution; returns set -> folder."""
    try:
        from vfe.synthetic import write_video
    except ImportError as error:
        message = f"vfe bench needs PyAV and matplotlib: pip install -e '.[bench]' ({error})"
        raise VfeError(message) from error

    folders = {}
    for name, (height, width) in VIDEO_SETS.items():
        folder = videos_dir / f"{name}-{seconds:g}s"
        for index in range(VIDEOS_PER_SET):
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

    from vfe.paths import find_videos

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


def build_backbone(model_name: str) -> Any:
    """The registered backbone with random weights, loaded."""
    module_name, class_name = MODELS[model_name].rsplit(".", 1)
    module = __import__(module_name, fromlist=[class_name])
    model = getattr(module, class_name)(weights="random")
    model.configure_model()
    return model.eval()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(timers: dict[str, float], key: str, function: Callable, device_of: Callable) -> Callable:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = function(*args, **kwargs)
        _synchronize(device_of())
        timers[key] = timers.get(key, 0.0) + time.perf_counter() - started
        return result

    return wrapper


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def measure_pipeline(options: dict[str, Any]) -> dict[str, Any]:
    from lightning.pytorch import Callback, Trainer

    from vfe.data import VideoDataModule
    from vfe.writer import FeatureWriter

    model = build_backbone(options["model"])
    timers: dict[str, float] = {}

    class WorkerTimes(Callback):
        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
            timers["decode"] = timers.get("decode", 0.0) + batch["decode_seconds"]
            timers["preprocess"] = timers.get("preprocess", 0.0) + batch["preprocess_seconds"]

    with tempfile.TemporaryDirectory() as output_dir:
        writer = FeatureWriter(output_dir=Path(output_dir))
        device_of = lambda: model.device  # noqa: E731
        model.transfer_batch_to_device = _timed(
            timers, "host_to_device", model.transfer_batch_to_device, device_of
        )
        model.predict_step = _timed(timers, "model", model.predict_step, device_of)
        writer.write_on_batch_end = _timed(timers, "write", writer.write_on_batch_end, device_of)
        trainer = Trainer(
            accelerator=options["device"],
            devices=1,
            precision=options["precision"],
            logger=False,
            callbacks=[writer, WorkerTimes()],
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        datamodule = VideoDataModule(
            input_dir=Path(options["videos"]),
            output_dir=Path(output_dir),
            clip_len=CLIP_LEN_SECONDS,
            batch_size=options["batch_size"],
            num_workers=options["num_workers"],
            overwrite=True,
            decoder=options["decoder"],
        )
        started = time.perf_counter()
        trainer.predict(model, datamodule=datamodule, return_predictions=False)
        wall = time.perf_counter() - started
    stages = {key: round(value, 3) for key, value in timers.items()}
    stages["waiting_for_data"] = round(
        max(0.0, wall - sum(timers.get(k, 0.0) for k in ("host_to_device", "model", "write"))), 3
    )
    return {"wall_seconds": wall, "stage_seconds": stages, "device": str(model.device)}


def _bench_dataset(options: dict[str, Any], spec: Any) -> Any:
    """The pipeline's own dataset over the set's videos, on one process."""
    from vfe.data import VideoClipDataset
    from vfe.paths import find_videos

    return VideoClipDataset(
        find_videos(Path(options["videos"])),
        spec,
        CLIP_LEN_SECONDS,
        batch_size=options["batch_size"] or spec.default_batch_size,
        decoder=options["decoder"],
    )


def measure_decode(options: dict[str, Any]) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    spec = build_backbone(options["model"]).input_spec
    dataset = _bench_dataset(options, spec)
    loader = DataLoader(dataset, batch_size=None, num_workers=options["num_workers"])
    started = time.perf_counter()
    samples = sum(len(batch["pixels"]) for batch in loader)
    return {"wall_seconds": time.perf_counter() - started, "samples": samples}


def measure_model(options: dict[str, Any]) -> dict[str, Any]:
    """predict_step on the batches the pipeline would feed it, decoded beforehand, in memory."""
    device = _device(options["device"])
    model = build_backbone(options["model"]).to(device)
    dataset = _bench_dataset(options, model.input_spec)
    batches = [{"pixels": batch["pixels"].to(device)} for batch in dataset if len(batch["pixels"])]
    with torch.inference_mode(), _autocast(device, options["precision"]):
        model.predict_step(batches[0], 0)  # warm-up
        _synchronize(device)
        started = time.perf_counter()
        for batch in batches:
            model.predict_step(batch, 0)
        _synchronize(device)
    samples = sum(len(batch["pixels"]) for batch in batches)
    return {"wall_seconds": time.perf_counter() - started, "samples": samples}


def measure_baseline(options: dict[str, Any]) -> dict[str, Any]:
    """The original scripts' way: one video at a time, no workers, fp32."""
    import decord
    from clip.clip import _transform as clip_preprocess
    from PIL import Image
    from torch.nn import functional as F

    from vfe.paths import find_videos

    device = _device(options["device"])
    model = build_backbone(options["model"]).to(device)
    preprocess = clip_preprocess(model.input_spec.crop_size)  # what clip.load returns
    started = time.perf_counter()
    for entry in find_videos(Path(options["videos"])):
        reader = decord.VideoReader(str(entry.path))
        # The original scripts' grid: round(clip_len * fps) frames per clip.
        step = round(CLIP_LEN_SECONDS * reader.get_avg_fps())
        features = []
        for start in range(0, len(reader), step):
            stop = min(start + step, len(reader))
            frames = reader.get_batch(list(range(start, stop))).asnumpy()
            with torch.no_grad():
                if options["model"] == "clip":
                    images = torch.stack([preprocess(Image.fromarray(f)) for f in frames])
                    per_frame = [
                        model.visual(images[i : i + 32].to(device))
                        for i in range(0, len(images), 32)
                    ]
                    features.append(torch.cat(per_frame).mean(0).cpu())
                else:
                    clip_frames = torch.from_numpy(frames).permute(3, 0, 1, 2).float()
                    indices = torch.linspace(0, clip_frames.shape[1] - 1, 32).long()
                    x = clip_frames[:, indices] / 255.0
                    x = (x - 0.45) / 0.225
                    height, width = x.shape[-2:]
                    scale = 256 / min(height, width)
                    x = F.interpolate(
                        x, size=(int(height * scale), int(width * scale)), mode="bilinear"
                    )
                    top, left = (x.shape[-2] - 256) // 2, (x.shape[-1] - 256) // 2
                    x = x[..., top : top + 256, left : left + 256]
                    slow = x[:, torch.linspace(0, 31, 8).long()]
                    features.append(model.model([slow[None].to(device), x[None].to(device)])[0])
    return {"wall_seconds": time.perf_counter() - started}


MEASUREMENTS = {
    "pipeline": measure_pipeline,
    "decode": measure_decode,
    "model": measure_model,
    "baseline": measure_baseline,
}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _measure_in_this_process(options: dict[str, Any]) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    result = MEASUREMENTS[options["kind"]](options)
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["peak_rss_mb"] = round(self_usage.ru_maxrss / 1024, 1)
    result["worker_peak_rss_mb"] = round(children.ru_maxrss / 1024, 1)
    if torch.cuda.is_available():
        result["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["gpu_name"] = torch.cuda.get_device_name()
    print("VFE_BENCH_RESULT " + json.dumps(result))


def _run_measurement(options: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, "-m", "vfe.bench", "--measure", json.dumps(options)]
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
    folders = make_videos(Path(args.videos_dir).expanduser(), args.seconds)
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
    }
    if "gpu_peak_mb" in pipeline:
        row["gpu_peak_mb"] = pipeline["gpu_peak_mb"]
        row["gpu_utilisation_percent"] = utilisation.mean_percent
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in pipeline["gpu_name"]), None)
        if peak:
            achieved = work["samples"] * GFLOP_PER_SAMPLE[options["model"]] * 1e9
            row["mfu"] = round(achieved / pipeline["wall_seconds"] / (peak * 1e12), 4)
    if not args.no_baseline and options["precision"] == "32-true":
        baseline = _run_measurement({**options, "kind": "baseline"})
        row["baseline_video_seconds_per_second"] = round(seconds / baseline["wall_seconds"], 3)
        row["speedup_over_baseline"] = round(baseline["wall_seconds"] / pipeline["wall_seconds"], 2)
    return row


def _print_row(row: dict[str, Any]) -> None:
    print(
        f"{row['set']:>5} {row['model']:>8} {row['precision']:>10}: "
        f"{row['video_seconds_per_second']:.2f} video-s/s, {row['clips_per_second']:.2f} clips/s, "
        f"{row['decoded_frames_per_second']:.0f} frames/s, efficiency {row['efficiency']:.2f} "
        f"(decode ceiling {row['decode_ceiling_video_seconds_per_second']:.2f}, model ceiling "
        f"{row['model_ceiling_video_seconds_per_second']:.2f}), "
        f"speed-up over baseline {row.get('speedup_over_baseline', '-')}, "
        f"peak RSS {row['peak_rss_mb']:.0f} MB, stages {row['stage_seconds']}",
        flush=True,
    )


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vfe bench", description=__doc__.splitlines()[0])
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sets", nargs="+", default=list(VIDEO_SETS), choices=list(VIDEO_SETS))
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each video")
    parser.add_argument("--videos_dir", default="~/.cache/vfe/bench-videos")
    parser.add_argument("--precision", nargs="+", default=["32-true"],
                        choices=["32-true", "bf16-mixed", "16-mixed"])  # fmt: skip
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--decoder", default=DEFAULT_DECODER, choices=list(DECODERS))
    parser.add_argument("--no_baseline", action="store_true")
    parser.add_argument("--output_json", default="bench.json")
    parser.add_argument("--output_png", default="bench.png")
    args = parser.parse_args(argv)
    if args.measure:
        _measure_in_this_process(json.loads(args.measure))
        return
    try:
        rows = run_benchmark(args)
    except VfeError as error:
        print(f"vfe bench: error: {error}", file=sys.stderr)
        sys.exit(2)
    write_chart(rows, Path(args.output_png))
    print(f"vfe bench: results in {args.output_json} and {args.output_png}")


if __name__ == "__main__":
    main()
