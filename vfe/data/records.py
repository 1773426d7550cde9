"""What travels from the decoding workers to the writer with each batch: the samples per
backbone, and records of videos (or segments of videos) started, finished and failed.

A batch is a plain dict (so the DataLoader pins its tensors and Lightning moves them); the
records in it are dataclasses holding no tensors.
"""

from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple, NotRequired, TypedDict

import torch

from vfe.decoding.colour import FrameLayout


class Samples(NamedTuple):
    """Samples of one backbone as they leave a worker."""

    # layout None: `(N, C, h, w)` (or stacked `(N, C, T, h, w)`) uint8 at the backbone's size;
    # a layout: `(N, 1, rows, cols)` (or `(N, 1, T, rows, cols)`) pictures as decoded, packed
    # (`vfe.decoding.colour`), converted and resized on the model's device
    pixels: torch.Tensor
    layout: FrameLayout | None


@dataclass
class VideoStart:
    """A video (or one segment of it) whose decoding started."""

    index: int  # the video's position in the run's list
    relative_path: str
    size_bytes: int
    mtime_ns: int
    fingerprint: str  # `vfe.data.paths.video_fingerprint`
    num_segments: int  # how many work items the video was split into (1: whole)
    models: list[str]  # the backbones it is decoded for
    rank_segments: int = 0  # how many of those this rank decodes (0: all)
    num_ranks: int = 1  # ranks decoding segments of it (> 1: assembled from their parts)
    shard: int | None = None  # a sample of this shard of the run (`vfe.sources.shards`)


@dataclass
class VideoTail:
    """What only the segment that reached the end of the file knows."""

    num_clips: int
    duration_seconds: Fraction  # the last frame's time plus its duration


@dataclass
class RowsOfRecipe:
    """A backbone's rows of a video under an FFmpeg recipe, which cuts its own rows."""

    num_rows: int
    row_seconds: Fraction  # the period of the rows (their window length)


@dataclass
class StrideWindows:
    """A backbone whose overlapping clips are combined from windows of the stride (its samples'
    clip numbers are window numbers): k windows per clip, and the windows held by the frame
    before them (no frame of their own), as (start, stop) ranges."""

    per_clip: int
    held: list[tuple[int, int]]


@dataclass
class SegmentEnd:
    """A video (or segment) fully decoded: all its samples are in this batch or earlier ones."""

    index: int
    first_clip: int
    num_samples: dict[str, int]  # per backbone, samples sent for this segment
    num_frames: int
    clip_length: float  # seconds, as the user gave it
    decode_errors: int = 0  # errors the decoder concealed (only where allowed)
    last: VideoTail | None = None  # for the segment that reached the end of the file
    clip_stride: float | None = None  # seconds between clip starts; None: clip_length
    tail: str = "keep"  # the tail rule (`vfe.data.clip_grid.TAIL_RULES`)
    nvdec_frames: int | None = None  # frames NVDEC decoded (decoding on cuda); None on the CPU
    decode: str = "sequential"  # "sparse": only the frames used (`vfe.decoding.sparse`)
    audio_seconds: float | None = None  # the file's audio, where audio backbones read it
    # per backbone with an FFmpeg recipe (whole videos only): its rows, instead of the grid's
    recipe_rows: dict[str, RowsOfRecipe] = field(default_factory=dict)
    # per backbone encoding each frame once under a stride (whole videos only)
    stride_windows: dict[str, StrideWindows] = field(default_factory=dict)


@dataclass
class VideoFailure:
    """A video (or segment) that could not be decoded; the whole video fails."""

    index: int
    path: str
    relative_path: str
    stage: str  # "open" or "decode"
    error: str
    models: list[str]  # the backbones it was decoded for
    shard: int | None = None  # a sample of this shard of the run


@dataclass
class ShardEnd:
    """Every sample of a shard has been sent (their ends and failures are in this batch or
    earlier ones); `samples`: how many; `error`: why the shard could not be read to its end
    (its samples read before that are still written)."""

    shard: int  # the shard's number in the run
    samples: int
    models: list[str]  # the backbones it was decoded for
    error: str | None = None
    elsewhere: bool = False  # not read: another job sharing the folder claimed or finished it


class ModelSamples(TypedDict):
    """One backbone's samples in a batch."""

    # (B, C, H, W) or (B, C, T, H, W) uint8 at the backbone's size; with packed pictures
    # (`--data.convert_on model`), runs of samples of one layout each, as `layouts` says
    pixels: torch.Tensor | list[torch.Tensor]
    layouts: NotRequired[list[FrameLayout | None]]
    video_index: list[int]  # (B) lists, not tensors: they stay on the host
    clip_index: list[int]


class Batch(TypedDict):
    """What the dataset yields (the DataLoader runs with batch_size=None)."""

    models: dict[str, ModelSamples]  # only the backbones with samples in this batch
    videos: list[VideoStart]
    ends: list[SegmentEnd]
    failures: list[VideoFailure]
    shard_ends: NotRequired[list[ShardEnd]]  # runs over shards
    decoded_bytes: int  # bytes of the files whose samples are all in this batch or earlier
    decode_seconds: float  # worker time spent on this batch's samples (for benchmarks)
    preprocess_seconds: float
