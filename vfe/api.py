"""`vfe.extract(...)`: features for notebooks, through the same datamodule, models and writer as
`vfe predict` (the arrays returned are those of the .npz files it writes)."""

import contextlib
import hashlib
import json
import logging
import re
import signal
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import Trainer

from vfe.backbones.multi import MultiBackbone
from vfe.data.datamodule import VideoDataModule, list_videos
from vfe.data.paths import output_path_for
from vfe.destinations import is_url
from vfe.errors import VfeError
from vfe.messages import quiet_reports
from vfe.output.failures import FAILURES_FILE_NAME, read_failures
from vfe.output.read_back import shard_samples, shard_stats
from vfe.output.writer import FeatureWriter
from vfe.planning.provenance import PROVENANCE_KEY
from vfe.predict_cli import check_device
from vfe.stopping import STOP_REQUEST, STOP_SIGNALS

VideoArrays = dict[str, Any]  # features, timestamps, fps, clip_length, provenance (a dict)


def extract(
    videos: str | Path | Sequence[str | Path] | None = None,
    model: str | Sequence[str] = "clip",
    model_options: dict[str, dict[str, Any]] | None = None,
    output_dir: str | Path | None = None,
    clip_len: float = 2.0,
    clip_stride: float | None = None,
    tail: str = "keep",
    convert_on: str = "workers",
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "32-true",
    num_workers: int = 0,
    overwrite: bool = False,
    allow_failures: bool = False,
    progress: bool = False,
    output_dtype: str = "float32",
    input_shards: str | None = None,
) -> dict[str, VideoArrays] | dict[str, dict[str, VideoArrays]]:
    """Per-clip features of `videos` (a folder, searched recursively, or a list of files).

    Returns, per video (keyed by the path as given, or relative to the folder; videos of one
    file name in several folders are each given their own id), the arrays
    `vfe predict` writes: `features (num_clips, D) float32`, `timestamps (num_clips, 2)`, `fps`,
    `clip_length`, and `provenance` as a dict. With several models (`model=["clip",
    "slowfast"]`), one such dict per model name. `model_options`: per model name, its options
    (`{"clip": {"arch": "ViT-B/16", "recipe": "hero"}}`); with one model, also its options
    alone (`{"arch": "ViT-B/16"}`). `output_dtype`: "float16" saves (and returns) features as
    float16, as `--output_dtype`.

    `output_dir`: keep the .npz files there (a video whose file exists with the same settings
    is read, not recomputed; files of a list are named by file name); None: a temporary
    folder. `convert_on="model"`: colour conversion and resizing on the model's device (as
    `--data.convert_on`). A video that fails raises VfeError naming it, unless
    `allow_failures` (then it is left out).

    `input_shards` instead of `videos`: webdataset tar shards (`"s3://b/{000..009}.tar"`, as
    `--input_shards`); keyed by each sample's key, output shards kept in a local `output_dir`.
    """
    if (videos is None) == (input_shards is None):
        raise VfeError("extract() takes videos or input_shards=, one of them")
    if input_shards is not None and is_url(output_dir):
        raise VfeError(
            f"output_dir={str(output_dir)!r}: extract() reads its results back from a local "
            "folder (vfe predict writes shards to object storage)"
        )
    check_device(device, "device=")
    names = [model] if isinstance(model, str) else list(model)
    options = _options_by_model(names, model_options)
    if batch_size is not None:
        if len(names) > 1:
            raise VfeError("batch_size is for one model; give each its own in model_options")
        options[names[0]] = {**options.get(names[0], {}), "batch_size": batch_size}
    with tempfile.TemporaryDirectory(prefix="vfe-") as scratch:
        out = Path(output_dir) if output_dir is not None else Path(scratch) / "features"
        if input_shards is not None:
            source, keys = {"input_shards": input_shards}, {}
        else:
            source, keys = _source(videos, Path(scratch))
        datamodule = VideoDataModule(
            **source,
            output_dir=out,
            clip_len=clip_len,
            clip_stride=clip_stride,
            tail=tail,
            convert_on=convert_on,
            num_workers=num_workers,
            overwrite=overwrite,
            part="all",  # the videos asked for, also inside a SLURM array task
            output_dtype=output_dtype,
        )
        writer = FeatureWriter(output_dir=out)
        backbone = MultiBackbone(names, options)
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        STOP_REQUEST.reset()
        try:
            with _quiet_lightning(), quiet_reports(output_dir is None):
                trainer = Trainer(
                    accelerator=device,
                    devices=1,
                    precision=precision,
                    logger=False,
                    callbacks=[writer],
                    enable_progress_bar=progress,
                    enable_model_summary=False,
                )
                trainer.predict(backbone, datamodule=datamodule, return_predictions=False)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        run_id = datamodule.plan.run_id if datamodule.plan is not None else ""
        if input_shards is not None:
            results = {
                name: _read_shards(Path(folder), run_id, allow_failures)
                for name, folder in writer.output_dirs.items()
            }
            return results[names[0]] if len(names) == 1 else results
        listed = list_videos(
            datamodule.input_dir,
            datamodule.input_list,
            datamodule.layout,
            datamodule.audio_files,
        )
        results = {
            name: _read(folder, [v.relative_path for v in listed], keys, run_id, allow_failures)
            for name, folder in writer.output_dirs.items()
        }
    return results[names[0]] if len(names) == 1 else results


def _options_by_model(
    names: list[str], model_options: dict[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """`model_options` per model name; one model's options may come without its name."""
    options = dict(model_options or {})
    if len(names) == 1 and options and not any(isinstance(v, dict) for v in options.values()):
        return {names[0]: options}
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise VfeError(
            f"model_options names {unknown[0]!r}, which is not among model={names!r}; give "
            "{model name: {option: value}} (one model: its options alone)"
        )
    return options


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's device lines and tips stay out of a library call's output (every call, not
    only the first), the caller's logging levels restored after."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # Expected for an IterableDataset, and a deprecation inside Lightning.
            warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
            warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
            # torch.jit.script at import time in fvcore and clip (upstream's to change)
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _source(videos: str | Path | Sequence[str | Path], scratch: Path) -> tuple[dict, dict]:
    """The datamodule's input options, and each video's name in the run -> the key returned."""
    if isinstance(videos, str | Path):
        if Path(videos).is_dir():
            return {"input_dir": Path(videos)}, {}
        videos = [videos]
    paths = [Path(video) for video in videos]
    if not paths:
        raise VfeError("extract() needs at least one video")
    if len({path.absolute() for path in paths}) < len(paths):
        raise VfeError("extract() was given the same video twice")
    names = Counter(path.name for path in paths)
    lines, keys = [], {}
    for path, video in zip(paths, videos, strict=True):
        if names[path.name] == 1:  # its file name names its output, as in a list
            lines.append(f"{path.absolute()}\n")
            keys[path.name] = str(video)
        else:  # videos of one name in several folders: each its own id
            video_id = _unique_id(path)
            lines.append(f"{path.absolute()}\t{video_id}\n")
            keys[video_id + (path.suffix or ".video")] = str(video)
    list_file = scratch / "videos.txt"
    list_file.write_text("".join(lines))
    return {"input_list": list_file}, keys


def _unique_id(path: Path) -> str:
    """`<stem>-<8 hex digits of the absolute path>`, with characters an id cannot hold as `_`."""
    stem = re.sub(r"[^A-Za-z0-9_.\-=+,@]", "_", path.stem).lstrip(".") or "video"
    return f"{stem}-{hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:8]}"


def _read_shards(folder: Path, run_id: str, allow_failures: bool) -> dict[str, VideoArrays]:
    """Every sample of the folder's output shards, by key; this run's failures (in the shards'
    stats) raise unless allowed."""
    failed = [
        f"{stats['shard']}/{failure.get('relative_path')}: {failure.get('error')}"
        for _, stats in shard_stats(folder)
        if stats.get("run") == run_id
        for failure in stats.get("failures", [])
    ]
    if failed and not allow_failures:
        raise VfeError(f"{len(failed)} video(s) failed: {'; '.join(failed[:5])}")
    arrays: dict[str, VideoArrays] = {}
    for key, _, saved in shard_samples(folder):
        record = {name: value for name, value in saved.items() if name != PROVENANCE_KEY}
        record["provenance"] = json.loads(str(saved[PROVENANCE_KEY]))
        arrays[key] = record
    return arrays


def _read(
    folder: Path, names: list[str], keys: dict[str, str], run_id: str, allow_failures: bool
) -> dict[str, VideoArrays]:
    """The arrays of videos `names` (their names in the run) from `folder`; this run's
    failures (`run_id`) raise unless allowed."""
    failed = [
        f"{record.get('path')}: {record.get('error')}"
        for record in read_failures(folder / FAILURES_FILE_NAME).records
        if record.get("run") == run_id
    ]
    if failed and not allow_failures:
        raise VfeError(f"{len(failed)} video(s) failed: {'; '.join(failed[:5])}")
    arrays: dict[str, VideoArrays] = {}
    for name in names:
        path = output_path_for(folder, name)
        if not path.exists():
            continue
        with np.load(path) as saved:
            record = {key: saved[key] for key in saved.files if key != PROVENANCE_KEY}
            record["provenance"] = json.loads(str(saved[PROVENANCE_KEY]))
        arrays[keys.get(name, name)] = record
    return arrays
