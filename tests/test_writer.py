from pathlib import Path

import numpy as np
import pytest

from vfe.writer import ClipFeatureAssembler, save_npz_atomically


def start(index: int) -> dict:
    return {"index": index, "relative_path": f"v{index}.mp4"}


def end(index: int, num_samples: int, timestamps: list[list[float]]) -> dict:
    return {
        "index": index,
        "num_samples": num_samples,
        "num_clips": len(timestamps),
        "num_frames": num_samples,
        "fps": 25.0,
        "clip_length": 2.0,
        "timestamps": timestamps,
    }


def test_clip_feature_is_the_mean_of_its_samples_across_batches():
    assembler = ClipFeatureAssembler()
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
    assembler = ClipFeatureAssembler()
    assembler.add_video(start(0))
    for clip in range(100):
        features = np.full((3, 4), float(clip))
        assembler.add_features(features, np.zeros(3, int), np.full(3, clip))
    (video,) = assembler.add_end(end(0, 300, [[2.0 * i, 2.0 * i + 2] for i in range(100)]))
    np.testing.assert_array_equal(video.arrays["features"][:, 0], np.arange(100))


def test_a_clip_without_samples_is_a_bug_not_a_zero_feature():
    assembler = ClipFeatureAssembler()
    assembler.add_video(start(0))
    assembler.add_features(np.ones((2, 2)), np.array([0, 0]), np.array([0, 2]))
    with pytest.raises(RuntimeError, match="clips without samples"):
        assembler.add_end(end(0, 2, [[0, 2], [2, 4], [4, 5]]))


def test_a_failed_video_is_dropped_and_its_later_samples_ignored():
    assembler = ClipFeatureAssembler()
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
    from vfe.data import VideoDataModule
    from vfe.progress import VideoProgressBar
    from vfe.writer import FeatureWriter

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
    assert (shown.n, shown.total) == (2, 2)  # videos done (written or failed) of this rank's
    assert "clips=2" in str(shown.postfix) and "failed=1" in str(shown.postfix)
