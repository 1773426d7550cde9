"""One long video decoded on several ranks: each rank leaves its part, the last one merges
them; the features equal those of one process."""

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import run_vfe

from vfe.bench.synthetic import write_video
from vfe.data.records import SegmentEnd, VideoFailure, VideoStart, VideoTail
from vfe.output.assembly import PartialVideo
from vfe.output.parts import PARTS_DIR_NAME, claim_parts, merge_parts, part_folder, write_part


@pytest.mark.slow
def test_one_long_video_on_two_ranks_equals_one_process(
    tiny_clip_file: Path, slowfast_pyth_file: Path, tmp_path: Path
):
    """Each of two backbones' files from a video split over two ranks equals one process's;
    a rerun (one process) skips it. (One backbone over ranks: `test_runs.py`'s DDP test.)"""
    write_video(tmp_path / "in" / "long.mp4", num_frames=300, fps=25, height=48, width=64, seed=5)
    models = "clip,slowfast"
    weights = [
        "--model.clip.arch", "custom", "--model.clip.weights", str(tiny_clip_file),
        "--model.slowfast.weights", str(slowfast_pyth_file),
    ]  # fmt: skip
    folders = ["clip", "slowfast"]
    common = [
        "--model", models, *weights, "--input_dir", "in", "--trainer.accelerator", "cpu",
        "--data.num_workers", "0", "--data.min_segment_seconds", "2",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    single = run_vfe(*common, "--output_dir", "one", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    double = run_vfe(
        *common, "--output_dir", "two", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        cwd=tmp_path,
    )  # fmt: skip
    assert double.returncode == 0, double.stderr
    assert double.stderr.count("written 1, skipped 0, failed 0, clips 6") == len(folders)
    for folder in folders:
        with (
            np.load(tmp_path / "one" / folder / "long.npz") as one,
            np.load(tmp_path / "two" / folder / "long.npz") as two,
        ):
            np.testing.assert_allclose(two["features"], one["features"], rtol=1e-5, atol=1e-5)
            for key in ("timestamps", "fps", "clip_length"):
                np.testing.assert_array_equal(two[key], one[key])
            video = json.loads(str(two["provenance"]))["video"]
        assert (video["segments"], video["ranks"]) == (2, 2)  # both ranks decoded a half
        assert not (tmp_path / "two" / folder / PARTS_DIR_NAME).exists()
    again = run_vfe(*common, "--output_dir", "two", cwd=tmp_path)
    assert again.stderr.count("written 0, skipped 1") == 2  # resumes like any video


def _info(rank_segments: int) -> VideoStart:
    return VideoStart(0, "a/long.mp4", 10, 1, "sha256-sampled:x", 2, ["m"], rank_segments, 2)


def _end(first_clip: int, last: VideoTail | None) -> SegmentEnd:
    return SegmentEnd(0, first_clip, {"m": 2}, 50, 2.0, last=last)


def test_parts_merge_once_when_all_are_written(tmp_path: Path):
    folder = tmp_path / "parts"
    first = PartialVideo(
        _info(1), np.array([[2.0, 4.0], [0.0, 0.0]]), np.array([2, 0]), [_end(0, None)]
    )
    write_part(folder, 0, first)
    assert claim_parts(folder, 2) is None  # rank 1's part not there yet
    tail = VideoTail(2, Fraction(7, 2))
    second = PartialVideo(
        _info(1), np.array([[0.0, 0.0], [6.0, 8.0]]), np.array([0, 2]), [_end(1, tail)]
    )
    write_part(folder, 1, second)
    parts = claim_parts(folder, 2)
    assert parts is not None and claim_parts(folder, 2) is None  # only one merger
    video = merge_parts(parts)
    assert video.arrays["features"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert video.arrays["timestamps"].tolist() == [[0.0, 2.0], [2.0, 3.5]]
    assert float(video.arrays["fps"]) == 100 / 3.5  # both segments' frames


def test_a_part_without_frames_merges(tmp_path: Path):
    """A container that overstates its duration leaves the last segment without frames."""
    folder = tmp_path / "parts"
    tail = VideoTail(1, Fraction(2))
    write_part(folder, 0, PartialVideo(_info(1), np.ones((1, 2)), np.array([1]), [_end(0, tail)]))
    empty = SegmentEnd(0, 5, {"m": 0}, 0, 2.0)
    write_part(folder, 1, PartialVideo(_info(1), np.zeros((0, 0)), np.zeros(0, np.int64), [empty]))
    video = merge_parts(claim_parts(folder, 2))
    assert video.arrays["features"].tolist() == [[1.0, 1.0]]


def test_a_failed_part_makes_the_merge_a_failure(tmp_path: Path):
    folder = tmp_path / "parts"
    failure = VideoFailure(0, "/v/a/long.mp4", "a/long.mp4", "decode", "EOFError: cut", ["m"])
    write_part(folder, 1, failure)
    ok = PartialVideo(_info(1), np.ones((1, 2)), np.array([1]), [_end(0, None)])
    write_part(folder, 0, ok)
    assert merge_parts(claim_parts(folder, 2)) == failure


def test_parts_of_a_killed_run_are_removed_when_the_next_run_starts(tmp_path: Path):
    """A rank that died leaves its part; the next run (rank 0's setup) removes it, and redoes
    the video, which has no .npz."""
    from vfe.output.parts import remove_stale_parts

    folder = part_folder(tmp_path, "20261130T000000-1", "a/long.mp4")
    write_part(folder, 0, PartialVideo(_info(1), np.ones((1, 2)), np.array([1]), [_end(0, None)]))
    (tmp_path / "kept.npz").write_bytes(b"x")
    remove_stale_parts(tmp_path)
    assert not (tmp_path / PARTS_DIR_NAME).exists() and (tmp_path / "kept.npz").exists()
