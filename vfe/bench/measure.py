"""The measurements of `vfe bench`, each run in a fresh process (`python -m vfe.bench.measure
OPTIONS`) for clean peak memory, thread settings and caches: pipeline, decode ceiling, model
ceiling, and the original scripts' approach. Nothing here knows a backbone by name."""

import contextlib
import functools
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vfe.backbones.registry import resolve_model

CLIP_LEN_SECONDS = 2.0


def random_options(model: str) -> tuple[str, dict[str, str]]:
    """`name` or `name:arch` -> the backbone name and its options with random weights."""
    name, _, arch = model.partition(":")
    return name, {"weights": "random", **({"arch": arch} if arch else {})}


def build_backbone(model_name: str) -> Any:
    """The registered backbone with random weights, loaded; `a,b` several from one decode;
    `name:arch` picks an architecture (`pytorchvideo:x3d_m`, `timm:convnext_base`)."""
    if "," in model_name:
        from vfe.backbones.multi import MultiBackbone

        members = dict(random_options(member) for member in model_name.split(","))
        model = MultiBackbone(list(members), members)
    else:
        name, options = random_options(model_name)
        module_name, class_name = resolve_model(name).rsplit(".", 1)
        module = __import__(module_name, fromlist=[class_name])
        model = getattr(module, class_name)(**options)
    model.configure_model()
    # Nothing here trains; FlopCounterMode's module hooks also trip over parameters that ask
    # for gradients inside inference mode (open_clip's SigLIP attention pool).
    return model.eval().requires_grad_(False)


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

    from vfe.data.datamodule import VideoDataModule
    from vfe.output.writer import FeatureWriter

    model = build_backbone(options["model"])
    if options.get("passthrough"):
        from vfe.backbones.multi import MultiBackbone
        from vfe.bench.scaling import PassThroughBackbone

        stand_ins = [
            PassThroughBackbone(member.input_spec, member.feature_dim, name)
            for name, member in model.members().items()
        ]
        model = stand_ins[0] if len(stand_ins) == 1 else MultiBackbone.of(stand_ins)
    timers: dict[str, float] = {}

    steady: dict[str, float] = {"samples": 0}  # after the first batch: start-up left out

    class WorkerTimes(Callback):
        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
            timers["decode"] = timers.get("decode", 0.0) + batch["decode_seconds"]
            timers["preprocess"] = timers.get("preprocess", 0.0) + batch["preprocess_seconds"]
            samples = sum(len(m["clip_index"]) for m in batch["models"].values())
            if "first_batch_end" not in steady:
                steady["first_batch_end"] = time.perf_counter()
            else:
                steady["samples"] += samples

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
            benchmark=options.get("cudnn_benchmark"),
        )
        datamodule = VideoDataModule(
            input_dir=Path(options["videos"]),
            output_dir=Path(output_dir),
            clip_len=options.get("clip_len", CLIP_LEN_SECONDS),
            batch_size=options["batch_size"],
            num_workers=options["num_workers"],
            overwrite=True,
            decoder=options["decoder"],
            convert_on=options.get("convert_on", "workers"),
            decode_device=options.get("decode_device", "cpu"),
            decode_streams=options.get("decode_streams", 1),
            min_segment_seconds=options.get("min_segment_seconds", 30.0),
            decode_threads=options.get("decode_threads"),
        )
        started = time.perf_counter()
        trainer.predict(model, datamodule=datamodule, return_predictions=False)
        ended = time.perf_counter()
        wall = ended - started
        plan = datamodule.plan
    stages = {key: round(value, 3) for key, value in timers.items()}
    stages["waiting_for_data"] = round(
        max(0.0, wall - sum(timers.get(k, 0.0) for k in ("host_to_device", "model", "write"))), 3
    )
    return {
        "wall_seconds": wall,
        "stage_seconds": stages,
        "device": str(model.device),
        # What the run did, so that a row never hides a failure or a software decode.
        "videos_planned": len(plan.videos),
        "videos_written": min(writer.counts.written.values(), default=0),
        "videos_failed": writer.total_failed,
        "videos_not_on_nvdec": writer.counts.not_nvdec,
        "steady_samples": steady["samples"],
        "steady_seconds": ended - steady.get("first_batch_end", ended),
    }


def _bench_dataset(
    options: dict[str, Any],
    spec: Any,
    convert_on: str = "workers",
    decode_device: str = "cpu",
    decode_streams: int = 1,
) -> Any:
    """The pipeline's own dataset over the set's videos, on one process, its work planned as
    the pipeline plans it (long videos in segments over the workers or decode streams)."""
    from vfe.data.clip_grid import clip_length_fraction
    from vfe.data.dataset import VideoClipDataset
    from vfe.data.paths import find_videos
    from vfe.data.work_plan import plan_ranks
    from vfe.decoding.video import split_duration_seconds, supports_segments

    videos = find_videos(Path(options["videos"]))
    decoder = options["decoder"]
    shares = max(1, options.get("num_workers", 0), decode_streams)

    def duration_of(index: int) -> float | None:
        return split_duration_seconds(videos[index].path, decoder)

    (work,) = plan_ranks(
        list(range(len(videos))),
        [video.size_bytes for video in videos],
        1,
        shares,
        clip_length_fraction(CLIP_LEN_SECONDS),
        duration_of if supports_segments(decoder) else None,
        options.get("min_segment_seconds", 30.0),
    )
    return VideoClipDataset(
        videos,
        {"model": spec},
        CLIP_LEN_SECONDS,
        {"model": options["batch_size"] or spec.default_batch_size},
        work=work,
        decoder=decoder,
        convert_on=convert_on,
        decode_device=decode_device,
        decode_streams=decode_streams,
        sparse_decode=True,  # as the pipeline decodes
    )


def _pixels(batch: dict[str, Any]) -> Any:
    """The bench dataset's samples in a batch (None if it has none)."""
    return batch["models"]["model"]["pixels"] if batch["models"] else None


def measure_decode(options: dict[str, Any]) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    spec = build_backbone(options["model"]).input_spec
    # The workers' side: with convert_on model, what they hand over is not converted yet.
    dataset = _bench_dataset(
        options,
        spec,
        options.get("convert_on", "workers"),
        options.get("decode_device", "cpu"),
        options.get("decode_streams", 1),
    )
    loader = DataLoader(dataset, batch_size=None, num_workers=options["num_workers"])
    started = time.perf_counter()
    samples = sum(
        len(batch["models"]["model"]["clip_index"]) for batch in loader if batch["models"]
    )
    return {"wall_seconds": time.perf_counter() - started, "samples": samples}


def measure_model(options: dict[str, Any]) -> dict[str, Any]:
    """The backbone on the batches the pipeline would feed it, decoded beforehand, in memory."""
    device = _device(options["device"])
    model = build_backbone(options["model"]).to(device)
    dataset = _bench_dataset({**options, "num_workers": 0}, model.input_spec)  # decoded here
    batches = [_pixels(batch).to(device) for batch in dataset if batch["models"]]
    with torch.inference_mode(), _autocast(device, options["precision"]):
        model.features(batches[0])  # warm-up
        _synchronize(device)
        started = time.perf_counter()
        for pixels in batches:
            model.features(pixels)
        _synchronize(device)
    samples = sum(len(pixels) for pixels in batches)
    seconds = time.perf_counter() - started
    return {
        "wall_seconds": seconds,
        "samples": samples,
        "flops_per_sample": flops_per_sample(model),
    }


def flops_per_sample(model: Any) -> float:
    """Forward FLOPs of one sample of the backbone's InputSpec, counted by PyTorch (2 per
    multiply-add; e.g. 8.8 G for a CLIP ViT-B/32 frame, 131 G for a SlowFast R50 clip)."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = model.input_spec
    frames = (spec.frames_per_clip,) if spec.stack_frames else ()
    shape = (1, 3, *frames, *spec.sample_size)
    pixels = torch.zeros(shape, dtype=torch.uint8, device=model.device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.features(pixels)
    return float(counter.get_total_flops())


def measure_baseline(options: dict[str, Any]) -> dict[str, Any]:
    """The original scripts' way, for any backbone: one video at a time, no workers, fp32, a
    grid of round(clip_len * fps) frames, frames converted to float at full resolution and
    resized as the backbone's InputSpec says, then encoded (image backbones 32 frames at once)."""
    import decord
    from torch.nn import functional as F
    from torchvision.transforms.v2 import functional as TF

    from vfe.data.clip_grid import uniform_indices
    from vfe.data.paths import find_videos

    device = _device(options["device"])
    model = build_backbone(options["model"]).to(device)
    spec = model.input_spec
    mean = torch.tensor(spec.mean, device=device).view(3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(3, 1, 1)

    def preprocess(frames: Any) -> torch.Tensor:  # (T, H, W, C) uint8 -> (T, C, h, w) float
        x = (torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float() / 255 - mean) / std
        size = spec.resized_size(x.shape[-2], x.shape[-1])
        x = F.interpolate(x, size=size, mode=spec.interpolation.value, antialias=spec.antialias)
        return x if spec.crop_size is None else TF.center_crop(x, list(spec.sample_size))

    started = time.perf_counter()
    for entry in find_videos(Path(options["videos"])):
        reader = decord.VideoReader(str(entry.path))
        step = round(CLIP_LEN_SECONDS * reader.get_avg_fps())
        for start in range(0, len(reader), step):
            indices = list(range(start, min(start + step, len(reader))))
            with torch.no_grad():
                if not spec.stack_frames:
                    if spec.frames_per_clip is not None:
                        picks = uniform_indices(len(indices), spec.frames_per_clip)
                        indices = [indices[i] for i in picks]
                    for chunk in range(0, len(indices), 32):
                        frames = reader.get_batch(indices[chunk : chunk + 32]).asnumpy()
                        model.encode(preprocess(frames))
                else:
                    picks = [
                        indices[i] for i in uniform_indices(len(indices), spec.frames_per_clip)
                    ]
                    clip = preprocess(reader.get_batch(picks).asnumpy()).permute(1, 0, 2, 3)
                    model.encode(clip[None])
        _synchronize(device)
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


if __name__ == "__main__":
    _measure_in_this_process(json.loads(sys.argv[1]))
