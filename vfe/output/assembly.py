"""Reassembles clip features from a stream of per-sample features, per video.

`ClipFeatureAssembler` holds only unfinished videos: per clip the running sum of its samples'
features and their count. A video is finished when the end records of all its segments (one
for an unsplit video) have arrived and so have all the samples they announce; its clip features
(the mean over samples), windows and fps are then final. A video whose segments are on several
ranks ends here as this rank's part (`PartialVideo`), which `vfe.output.parts` merges with the
other ranks' parts.
"""

from dataclasses import dataclass, field

import numpy as np

from vfe.data.clip_grid import clip_length_fraction, clip_windows, clips_kept
from vfe.data.records import SegmentEnd, StrideWindows, VideoStart


@dataclass
class _PendingVideo:
    info: VideoStart
    feature_sums: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (clips, D) f64
    sample_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (clips,)
    samples_seen: int = 0
    ends: list[SegmentEnd] = field(default_factory=list)  # one per segment

    def add(self, features: np.ndarray, clip_index: np.ndarray) -> None:
        """`features (N, D)` of samples of clips `clip_index (N,)`."""
        needed = int(clip_index.max()) + 1
        if needed > len(self.sample_counts):  # grow geometrically
            capacity = max(needed, 2 * len(self.sample_counts))
            sums = np.zeros((capacity, features.shape[1]), dtype=np.float64)
            counts = np.zeros(capacity, dtype=np.int64)
            if len(self.sample_counts):
                sums[: len(self.feature_sums)] = self.feature_sums
                counts[: len(self.sample_counts)] = self.sample_counts
            self.feature_sums, self.sample_counts = sums, counts
        np.add.at(self.feature_sums, clip_index, features)
        self.sample_counts += np.bincount(clip_index, minlength=len(self.sample_counts))
        self.samples_seen += len(clip_index)

    def complete(self, model: str) -> bool:
        """All this rank's segments ended and all the samples they announced for `model` are
        in."""
        segments = self.info.rank_segments or self.info.num_segments
        return len(self.ends) == segments and self.samples_seen == sum(
            end.num_samples[model] for end in self.ends
        )


@dataclass
class PartialVideo:
    """This rank's part of a video whose other segments were decoded on other ranks."""

    info: VideoStart
    feature_sums: np.ndarray  # (clips, D) float64, zero for clips of other ranks
    sample_counts: np.ndarray  # (clips,) int64
    ends: list[SegmentEnd]


@dataclass
class FinishedVideo:
    relative_path: str
    arrays: dict[str, np.ndarray]
    info: VideoStart
    decode_errors: int = 0  # errors the decoder concealed (written only where allowed)
    nvdec_frames: int | None = None  # decoding on cuda: frames NVDEC decoded (the rest: FFmpeg)
    decode: str = "sequential"  # "sparse" where every segment decoded only the frames used
    audio_seconds: float | None = None  # the file's audio, where an audio backbone read it


class ClipFeatureAssembler:
    """Turns a stream of one backbone's (`model`'s) per-sample features into per-video clip
    features."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._pending: dict[int, _PendingVideo] = {}
        self._failed: set[int] = set()

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    @property
    def clips_in_progress(self) -> int:
        """Clips of unfinished videos that have features so far (for progress)."""
        return sum(int(np.count_nonzero(p.sample_counts)) for p in self._pending.values())

    def add_video(self, info: VideoStart) -> None:
        """A video's start record; each segment of a split video sends one."""
        index = info.index
        if index not in self._pending and index not in self._failed:
            self._pending[index] = _PendingVideo(info)

    def drop_video(self, video_index: int) -> bool:
        """Forget a video that failed part-way (its later samples are ignored); False if a
        segment of it had failed already."""
        self._pending.pop(video_index, None)
        if video_index in self._failed:
            return False
        self._failed.add(video_index)
        return True

    def add_features(
        self, features: np.ndarray, video_index: np.ndarray, clip_index: np.ndarray
    ) -> list[FinishedVideo | PartialVideo]:
        """`features (B, D)` of samples with their video and clip; returns finished videos."""
        finished = []
        for video in np.unique(video_index).tolist():
            if video in self._failed:
                continue
            rows = video_index == video
            pending = self._pending[video]
            pending.add(features[rows], clip_index[rows])
            if pending.complete(self.model):
                finished.append(self._finish(video))
        return finished

    def add_end(self, end: SegmentEnd) -> list[FinishedVideo | PartialVideo]:
        """A segment's end record; returns the video finished if all its segments and samples
        are in."""
        if end.index in self._failed:
            return []
        pending = self._pending[end.index]
        pending.ends.append(end)
        return [self._finish(end.index)] if pending.complete(self.model) else []

    def _finish(self, video_index: int) -> FinishedVideo | PartialVideo:
        pending = self._pending.pop(video_index)
        if pending.info.num_ranks > 1:
            return PartialVideo(
                pending.info, pending.feature_sums, pending.sample_counts, pending.ends
            )
        return finish_video(
            pending.info, pending.feature_sums, pending.sample_counts, pending.ends, self.model
        )


def combine_windows(
    window_sums: np.ndarray, window_counts: np.ndarray, windows: StrideWindows
) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip feature sums and sample counts of overlapping clips from those of the stride's
    windows: clip i covers windows i .. i+k-1 (fewer at the end). Its samples are the frames of
    those windows; only where none of them has a frame of its own, the frame holding them
    (each held window holds the frame on screen at the clip's start)."""
    num = len(window_counts)
    held = np.zeros(num, dtype=bool)
    for start, stop in windows.held:
        held[start:stop] = True
    own_sums = np.where(held[:, None], 0.0, window_sums)
    own_counts = np.where(held, 0, window_counts)
    k = windows.per_clip

    # Sums over windows i .. i+k-1 as differences of running totals.
    def over_clips(values: np.ndarray) -> np.ndarray:
        totals = np.concatenate([np.zeros((1, *values.shape[1:])), np.cumsum(values, axis=0)])
        stops = np.minimum(np.arange(num) + k, num)
        return totals[stops] - totals[:num]

    sums, counts = over_clips(own_sums), over_clips(own_counts)
    empty = counts == 0  # every window of the clip held: the frame holding its first
    sums[empty], counts[empty] = window_sums[empty], window_counts[empty]
    return sums, counts.astype(np.int64)


def finish_video(
    info: VideoStart,
    feature_sums: np.ndarray,
    sample_counts: np.ndarray,
    ends: list[SegmentEnd],
    model: str | None = None,
) -> FinishedVideo:
    """A video's arrays from the per-clip sums and counts of all its samples and the end
    records of all its segments (`model`: the backbone, whose FFmpeg recipe may cut its own
    rows)."""
    # The segment that reached the end of the file knows the clip count and duration (if
    # the container overstated the duration, later segments found no frames).
    reached = [end for end in ends if end.last is not None]
    if not reached:
        raise RuntimeError(f"video {info.index}: no segment reached the end of the file")
    last = min(reached, key=lambda end: end.first_clip).last
    num_clips, duration = last.num_clips, last.duration_seconds
    end = ends[0]
    clip_length = clip_length_fraction(end.clip_length)
    stride = None if end.clip_stride is None else clip_length_fraction(end.clip_stride)
    recipe_rows = end.recipe_rows.get(model) if model is not None else None
    if recipe_rows is not None:  # a whole video whose recipe cut its own rows
        num_clips, clip_length, stride = recipe_rows.num_rows, recipe_rows.row_seconds, None
    num_frames = sum(end.num_frames for end in ends)
    counts = sample_counts[:num_clips]
    if len(sample_counts) > num_clips and sample_counts[num_clips:].any():
        raise RuntimeError(f"video {info.index}: samples beyond its {num_clips} clips")
    if len(counts) < num_clips or not counts.all():
        raise RuntimeError(f"video {info.index}: clips without samples: {counts.tolist()}")
    windows = end.stride_windows.get(model) if model is not None else None
    if windows is not None:  # window sums -> overlapping clips (`WindowSamples`)
        feature_sums, counts = combine_windows(feature_sums[:num_clips], counts, windows)
    if recipe_rows is None:
        num_clips = clips_kept(num_clips, clip_length, duration, end.tail, stride)
    means = feature_sums[:num_clips] / counts[:num_clips, None]
    windows = clip_windows(num_clips, clip_length, duration, stride)
    arrays = {
        "features": means.astype(np.float32),
        # An audio file has no frames, and no frame rate.
        "fps": np.float64(float(num_frames / duration) if duration and num_frames else np.nan),
        "clip_length": np.float64(end.clip_length),
        "timestamps": windows,
    }
    decode_errors = sum(end.decode_errors for end in ends)
    nvdec = [end.nvdec_frames for end in ends if end.nvdec_frames is not None]
    sparse = all(end.decode == "sparse" for end in ends)
    return FinishedVideo(
        info.relative_path,
        arrays,
        info,
        decode_errors,
        sum(nvdec) if nvdec else None,
        "sparse" if sparse else "sequential",
        next((end.audio_seconds for end in ends if end.audio_seconds is not None), None),
    )
