"""Grid options beyond the contract's default: a clip's middle frame (FFmpeg `fps=1/L`'s pick),
the `round` tail rule (FFmpeg's row count) and a stride (overlapping clips), checked against
the FFmpeg command line and an independent reading of the frames' times."""

import math
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import ReferenceDecode
from test_data import (
    CLIP8_SPEC,
    FRAME_SPEC,
    _all_batches,
    assembled,
    dataset_for,
    one_segment_per_clip,
    raw_pixels,
    samples_by_clip,
)
from torchvision.transforms import InterpolationMode

from vfe.bench.synthetic import write_video
from vfe.data.clip_grid import clips_kept, uniform_indices
from vfe.data.datamodule import VideoDataModule
from vfe.data.input_spec import FrameSampling, InputSpec
from vfe.data.paths import find_videos
from vfe.errors import VfeError

MIDDLE_SPEC = InputSpec(
    1, 1, 1, InterpolationMode.BICUBIC, True, (0.5,) * 3, (0.5,) * 3, 4,
    frame_sampling=FrameSampling.MIDDLE,
)  # fmt: skip


# The ffmpeg command line gives the first frame of this AVI (B-frames, no pts) the time 0.12 s,
# its reorder delay (`-vf showinfo`), so its fps filter works on shifted times; ffprobe, PyAV
# and vfe put the first frame at 0.
CLI_SHIFTS_TIMES = {"xvid_bframes.avi"}


def ffmpeg_fps_filter_frames(path: Path, clip_len: Fraction, height: int, width: int) -> np.ndarray:
    """`(N, height, width, 3) uint8`: what `ffmpeg -i path -vf fps=1/clip_len` outputs
    (autorotated, so `height x width` is the display size)."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-vf", f"fps=1/({clip_len})",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(out, np.uint8).reshape(-1, height, width, 3)


def nearest_frame(image: np.ndarray, frames: list[np.ndarray]) -> int:
    """Index of the reference frame closest to `image` (the command line's RGB conversion may
    differ from PyAV's by a level here and there); it must be close."""
    errors = [np.abs(frame.astype(np.int16) - image).mean() for frame in frames]
    best = int(np.argmin(errors))
    assert errors[best] < 3.0, f"no decoded frame matches (mean error {errors[best]:.1f})"
    return best


def middle_frames(reference: ReferenceDecode, clip_len: Fraction, stride: Fraction) -> list[int]:
    """For each clip of a stride: the last frame starting before the clip's middle (written from
    the definition, independently of vfe's code)."""
    num_clips = math.floor(reference.times[-1] / stride) + 1
    picks = []
    for i in range(num_clips):
        middle = i * stride + clip_len / 2
        picks.append(max(k for k, t in enumerate(reference.times) if t < middle))
    return picks


def strided_clips(
    reference: ReferenceDecode, clip_len: Fraction, stride: Fraction
) -> list[list[int]]:
    """Clip i holds the frames starting in [i*S, i*S + L); an empty window holds the frame on
    screen at its start."""
    num_clips = math.floor(reference.times[-1] / stride) + 1
    clips = []
    for i in range(num_clips):
        start = i * stride
        inside = [k for k, t in enumerate(reference.times) if start <= t < start + clip_len]
        clips.append(inside or [max(k for k, t in enumerate(reference.times) if t < start)])
    return clips


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
def test_middle_frame_is_the_frame_ffmpeg_fps_filter_outputs(
    real_world_videos, references, monkeypatch, split
):
    """On every file of the real-world corpus, each clip's one sample is the frame FFmpeg's
    `fps=1/L` outputs for it; and the `round` tail gives FFmpeg's number of rows."""
    monkeypatch.setattr("vfe.data.dataset.resize_and_center_crop", raw_pixels)
    clip_len = Fraction(1, 2)
    folder = next(iter(real_world_videos.values())).parent
    for entry in find_videos(folder):
        reference = references[entry.relative_path]
        num_clips = math.floor(reference.times[-1] / clip_len) + 1
        works = one_segment_per_clip(num_clips) if split else [None]
        if entry.relative_path == "program_stream.mpg":
            works = [None]  # never split (its timestamps shift after a seek)
        batches = []
        for work in works:
            dataset = dataset_for([entry], MIDDLE_SPEC, float(clip_len), work=work and [work])
            dataset.tail = "round"
            batches += _all_batches(dataset)
        assert not [f for b in batches for f in b["failures"]]
        clips = samples_by_clip(batches, 0)
        expected = middle_frames(reference, clip_len, clip_len)
        for clip, (sample,) in sorted(clips.items()):
            np.testing.assert_array_equal(
                sample.permute(1, 2, 0).numpy(), reference.frames[expected[clip]]
            )
        rows = len(assembled(batches)[0]["features"])
        if entry.relative_path in CLI_SHIFTS_TIMES:
            continue
        ffmpeg_frames = ffmpeg_fps_filter_frames(
            entry.path, clip_len, *reference.frames[0].shape[:2]
        )
        assert rows == len(ffmpeg_frames), entry.relative_path
        for clip, image in enumerate(ffmpeg_frames):
            assert nearest_frame(image, reference.frames) == expected[clip], (entry, clip)


@pytest.mark.parametrize(
    ("spec", "stride"),
    [(FRAME_SPEC, Fraction(1, 2)), (CLIP8_SPEC, Fraction(1, 4)), (MIDDLE_SPEC, Fraction(1, 2))],
    ids=["every frame", "8 per clip", "middle"],
)
def test_stride_clips_hold_the_frames_of_their_windows(
    real_world_videos, references, monkeypatch, spec, stride
):
    monkeypatch.setattr("vfe.data.dataset.resize_and_center_crop", raw_pixels)
    clip_len = Fraction(1)
    folder = next(iter(real_world_videos.values())).parent
    for entry in find_videos(folder):
        reference = references[entry.relative_path]
        dataset = dataset_for([entry], spec, float(clip_len), clip_stride_seconds=float(stride))
        batches = _all_batches(dataset)
        clips = samples_by_clip(batches, 0)
        expected_clips = strided_clips(reference, clip_len, stride)
        assert sorted(clips) == list(range(len(expected_clips))), entry.relative_path
        middles = middle_frames(reference, clip_len, stride)
        # Every frame: each frame once, in its window of the stride (S long); the clips are
        # combined from k windows after encoding (test_clip_grid's combine tests).
        windows = strided_clips(reference, stride, stride)
        for clip, frame_indices in enumerate(expected_clips):
            if spec.frames_per_clip is None:
                frame_indices = windows[clip]
            if spec.frame_sampling is FrameSampling.MIDDLE:
                picks = [middles[clip]]
            elif spec.frames_per_clip is None:
                picks = frame_indices
            else:
                picks = [frame_indices[p] for p in uniform_indices(len(frame_indices), 8)]
            if spec.stack_frames:
                (sample,) = clips[clip]
                got = list(sample.permute(1, 2, 3, 0).numpy())
            else:
                got = [sample.permute(1, 2, 0).numpy() for sample in clips[clip]]
            assert len(got) == len(picks), (entry.relative_path, clip)
            for image, k in zip(got, picks, strict=True):
                np.testing.assert_array_equal(image, reference.frames[k], err_msg=str(clip))
        arrays = assembled(batches)[0]
        duration = reference.duration
        clip_windows = [
            [float(i * stride), float(min(i * stride + clip_len, duration))]
            for i in range(len(expected_clips))
        ]
        assert arrays["timestamps"].tolist() == clip_windows, entry.relative_path


@pytest.mark.parametrize(
    ("num_clips", "clip_len", "duration", "stride", "kept"),
    [
        (5, 2, Fraction(9), None, 5),  # 4.5 rows round up: the 1-s tail keeps its row
        (6, 2, Fraction(21, 2), None, 5),  # 5.25 rows: the 0.5-s tail has none
        (5, 2, Fraction(10), None, 5),
        (2, 2, Fraction(3), None, 2),  # middle exactly at the end: kept
        (2, 2, Fraction(89, 30), None, 1),
        (1, 2, Fraction(4, 5), None, 1),  # FFmpeg gives no row; vfe keeps one for every video
        (11, 2, Fraction(21, 2), Fraction(1), 10),  # stride 1: clip 9's middle is at 10 s
    ],
)
def test_round_tail_keeps_clips_whose_middle_is_inside_the_video(
    num_clips, clip_len, duration, stride, kept
):
    assert clips_kept(num_clips, Fraction(clip_len), duration, "round", stride) == kept
    assert clips_kept(num_clips, Fraction(clip_len), duration, "keep", stride) == num_clips


def test_ffmpeg_row_counts_on_9_and_10_5_second_videos(tmp_path: Path):
    """The rule's source: FFmpeg's fps filter on constant-rate videos of known length."""
    for frames, expected in ((270, 5), (315, 5), (89, 1), (90, 2)):
        path = write_video(tmp_path / f"v{frames}.mp4", frames, fps=30, height=32, width=32)
        rows = len(ffmpeg_fps_filter_frames(path, Fraction(2), 32, 32))
        assert (
            rows
            == expected
            == clips_kept(
                math.floor(Fraction(frames - 1, 30) / 2) + 1,
                Fraction(2),
                Fraction(frames, 30),
                "round",
            )
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"clip_len": 2.0, "clip_stride": 0.75}, "must divide --clip_len 2.0"),
        ({"clip_len": 2.0, "clip_stride": 3.0}, "must divide"),
        ({"clip_len": 2.0, "clip_stride": -1.0}, "positive number"),
        ({"tail": "drop"}, "--data.tail 'drop' is not allowed; choose one of keep, round"),
    ],
)
def test_grid_options_are_checked(tmp_path: Path, options, message):
    with pytest.raises(VfeError, match=message):
        VideoDataModule(input_dir=tmp_path, **options)


@pytest.mark.parametrize("stride", [Fraction(1, 2), Fraction(1, 4)], ids=["k=2", "k=4"])
def test_stride_features_of_every_frame_equal_each_clips_own_mean(
    real_world_videos, references, monkeypatch, stride
):
    """Each frame is encoded once under a stride; the clips combined from its windows equal
    the mean over each clip's own frames (or the frame holding an empty clip), on every file of
    the corpus (a VFR file with a gap included). The "feature" is a function of the pixels."""
    from vfe.output.assembly import ClipFeatureAssembler

    monkeypatch.setattr("vfe.data.dataset.resize_and_center_crop", raw_pixels)
    clip_len = Fraction(1)
    folder = next(iter(real_world_videos.values())).parent
    for entry in find_videos(folder):
        reference = references[entry.relative_path]
        dataset = dataset_for(
            [entry], FRAME_SPEC, float(clip_len), clip_stride_seconds=float(stride)
        )
        assembler, finished, encoded = ClipFeatureAssembler("m"), [], 0

        def feature(pixels: np.ndarray) -> np.ndarray:  # (N, C, H, W) -> (N, 3) float32
            return pixels.reshape(*pixels.shape[:2], -1).astype(np.float64).mean(-1)

        for batch in _all_batches(dataset):
            for info in batch["videos"]:
                assembler.add_video(info)
            if "m" in batch["models"]:
                samples = batch["models"]["m"]
                encoded += len(samples["pixels"])
                finished += assembler.add_features(
                    feature(samples["pixels"].numpy()),
                    np.asarray(samples["video_index"]),
                    np.asarray(samples["clip_index"]),
                )
            for end in batch["ends"]:
                finished += assembler.add_end(end)
        (video,) = finished
        clips = strided_clips(reference, clip_len, stride)
        frames = np.stack(reference.frames).transpose(0, 3, 1, 2)
        expected = np.stack([feature(frames[indices]).mean(0) for indices in clips])
        np.testing.assert_allclose(
            video.arrays["features"], expected, rtol=1e-5, err_msg=entry.relative_path
        )
        # one sample per frame (and per empty window), not k per frame
        assert encoded == sum(len(window) for window in strided_clips(reference, stride, stride))
