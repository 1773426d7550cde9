from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from vfe.data.records import SegmentEnd, VideoFailure, VideoStart, VideoTail
from vfe.output.assembly import ClipFeatureAssembler
from vfe.output.npz import save_npz_atomically


def start(index: int) -> VideoStart:
    return VideoStart(index, f"v{index}.mp4", 0, 0, "", 1, ["m"])


def end(index: int, num_samples: int, timestamps: list[list[float]]) -> SegmentEnd:
    """The end record of an unsplit video at 25 fps whose clips end at `timestamps`."""
    duration = Fraction(timestamps[-1][1]).limit_denominator(1000)
    return SegmentEnd(
        index=index,
        first_clip=0,
        num_samples={"m": num_samples},
        num_frames=round(duration * 25),
        clip_length=2.0,
        last=VideoTail(len(timestamps), duration),
    )


def test_clip_feature_is_the_mean_of_its_samples_across_batches():
    assembler = ClipFeatureAssembler("m")
    assembler.add_video(start(0))
    assembler.add_video(start(1))
    first = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 3.0], [7.0, 1.0]])
    assert assembler.add_features(first, np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0])) == []
    # Video 1's end arrives with its last sample already in: it is finished at once.
    (one,) = assembler.add_end(end(1, 1, [[0.0, 1.0]]))
    assert one.relative_path == "v1.mp4"
    np.testing.assert_allclose(one.arrays["features"], [[7.0, 1.0]])
    # Video 0's end arrives before its last sample (it was still queued in the worker).
    assert assembler.add_end(end(0, 4, [[0.0, 2.0], [2.0, 2.5]])) == []
    (zero,) = assembler.add_features(np.array([[5.0, 5.0]]), np.array([0]), np.array([1]))
    arrays = zero.arrays
    np.testing.assert_allclose(arrays["features"], [[2.0, 1.0], [5.0, 5.0]])
    assert arrays["features"].dtype == np.float32
    np.testing.assert_array_equal(arrays["timestamps"], [[0.0, 2.0], [2.0, 2.5]])
    assert arrays["timestamps"].dtype == np.float64
    assert arrays["fps"].dtype == np.float64 and arrays["fps"].shape == ()
    assert assembler.num_pending == 0


def test_many_clips_arriving_in_order_grow_the_sums():
    assembler = ClipFeatureAssembler("m")
    assembler.add_video(start(0))
    for clip in range(100):
        features = np.full((3, 4), float(clip))
        assembler.add_features(features, np.zeros(3, int), np.full(3, clip))
    (video,) = assembler.add_end(end(0, 300, [[2.0 * i, 2.0 * i + 2] for i in range(100)]))
    np.testing.assert_array_equal(video.arrays["features"][:, 0], np.arange(100))


def test_a_clip_without_samples_is_a_bug_not_a_zero_feature():
    assembler = ClipFeatureAssembler("m")
    assembler.add_video(start(0))
    assembler.add_features(np.ones((2, 2)), np.array([0, 0]), np.array([0, 2]))
    with pytest.raises(RuntimeError, match="clips without samples"):
        assembler.add_end(end(0, 2, [[0, 2], [2, 4], [4, 5]]))


def test_a_failed_video_is_dropped_and_its_later_samples_ignored():
    assembler = ClipFeatureAssembler("m")
    assembler.add_video(start(0))
    assembler.add_features(np.ones((1, 2)), np.array([0]), np.array([0]))
    assembler.drop_video(0)
    assert assembler.add_features(np.ones((1, 2)), np.array([0]), np.array([0])) == []
    assert assembler.add_end(end(0, 2, [[0.0, 1.0]])) == []
    assert assembler.num_pending == 0


def test_atomic_save_leaves_only_the_final_file(tmp_path: Path):
    target = tmp_path / "a" / "b.npz"
    save_npz_atomically(target, {"features": np.zeros((1, 2), np.float32)})
    assert [p.name for p in target.parent.iterdir()] == ["b.npz"]
    assert np.load(target)["features"].shape == (1, 2)


def test_failed_save_leaves_no_temporary_file(tmp_path: Path):
    class Unsaveable:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("cannot convert")

    with pytest.raises(RuntimeError):
        save_npz_atomically(tmp_path / "c.npz", {"features": Unsaveable()})
    assert list(tmp_path.iterdir()) == []


def test_progress_bar_counts_videos_and_clips(video_dir: Path, tiny_clip_file: Path, tmp_path):
    from lightning.pytorch import Trainer

    from vfe.backbones.openai_clip import CLIPBackbone
    from vfe.data.datamodule import VideoDataModule
    from vfe.output.progress import VideoProgressBar
    from vfe.output.writer import FeatureWriter

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").write_bytes((video_dir / "moving.mp4").read_bytes())
    (tmp_path / "in" / "broken.mp4").write_text("not a video")
    bar, writer = VideoProgressBar(), FeatureWriter(output_dir=tmp_path / "out")
    trainer = Trainer(
        accelerator="cpu", devices=1, logger=False, callbacks=[writer, bar],
        enable_model_summary=False,
    )  # fmt: skip
    datamodule = VideoDataModule(tmp_path / "in", tmp_path / "out", num_workers=0)
    model = CLIPBackbone(arch="custom", weights=str(tiny_clip_file))
    trainer.predict(model, datamodule=datamodule, return_predictions=False)
    shown = bar.predict_progress_bar
    assert shown.n == shown.total  # the whole input decoded
    assert "videos=2/2" in str(shown.postfix)  # done (written or failed) of this rank's
    assert "clips=2" in str(shown.postfix) and "failed=1" in str(shown.postfix)


def test_progress_in_a_log_is_lines_not_redraws(
    video_dir: Path, tiny_clip_file: Path, tmp_path, capsys
):
    from lightning.pytorch import Trainer

    from vfe.backbones.openai_clip import CLIPBackbone
    from vfe.data.datamodule import VideoDataModule
    from vfe.output.progress import VideoProgressBar
    from vfe.output.writer import FeatureWriter

    bar = VideoProgressBar(log_interval_seconds=0)  # a line after every batch
    writer = FeatureWriter(output_dir=tmp_path / "out")
    trainer = Trainer(
        accelerator="cpu", devices=1, logger=False, callbacks=[writer, bar],
        enable_model_summary=False,
    )  # fmt: skip
    datamodule = VideoDataModule(video_dir, tmp_path / "out", num_workers=0, batch_size=16)
    model = CLIPBackbone(arch="custom", weights=str(tiny_clip_file))
    trainer.predict(model, datamodule=datamodule, return_predictions=False)
    err = capsys.readouterr().err  # not a terminal under pytest: a log
    lines = [line for line in err.splitlines() if line.startswith("Extracting:")]
    assert len(lines) >= 7  # 110 frames in batches of 16, and the final line
    assert "\r" not in err
    assert lines[-1].startswith("Extracting: 100%") and "videos=2/2" in lines[-1]
    clips = [int(line.split("clips=")[1].split(",")[0]) for line in lines]
    assert clips == sorted(clips) and clips[-1] == 3
    assert any(0 < count < 3 for count in clips)  # moves before the first video ends


def test_a_video_failing_in_two_segments_is_one_failure(tmp_path: Path):
    from vfe.output.failures import read_failures
    from vfe.output.writer import FeatureWriter

    writer = FeatureWriter(output_dir=tmp_path)
    writer.output_dirs = {"m": tmp_path}
    writer._assemblers = {"m": ClipFeatureAssembler("m")}
    failure = VideoFailure(3, "/in/v.mp4", "v.mp4", "decode", "DecodeError: corrupt packet", ["m"])
    writer._fail(failure)
    writer._fail(replace(failure, error="DecodeError: another corrupt packet"))  # next segment
    assert writer.counts.failed == 1 and writer.counts.videos_done == 1
    (record,) = read_failures(tmp_path / "failures.jsonl").records
    assert record["error"] == failure.error and record["relative_path"] == "v.mp4"


def test_an_error_in_the_writer_thread_stops_the_run(video_dir: Path, tiny_clip_file, tmp_path):
    from conftest import extract

    from vfe.backbones.openai_clip import CLIPBackbone

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "nested").write_text("a file where a folder must go")
    model = CLIPBackbone(arch="custom", weights=str(tiny_clip_file))
    with pytest.raises((FileExistsError, NotADirectoryError)):
        extract(model, video_dir, tmp_path / "out")
    assert (tmp_path / "out" / "moving.npz").exists()  # the other video was written
    # A run that ends on an error leaves no owner record, claim or part behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["moving.npz", "nested"]
