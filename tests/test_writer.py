from pathlib import Path

import numpy as np
import pytest

from vfe.writer import ClipFeatureAssembler, save_npz_atomically


def info(index: int, samples_per_clip: list[int]) -> dict:
    return {
        "index": index,
        "relative_path": f"v{index}.mp4",
        "num_clips": len(samples_per_clip),
        "samples_per_clip": samples_per_clip,
        "fps": 25.0,
        "clip_length": 2.0,
    }


def test_clip_feature_is_the_mean_of_its_samples_across_batches():
    assembler = ClipFeatureAssembler()
    assembler.add_video(info(0, [3, 1]))
    assembler.add_video(info(1, [1]))
    first = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 3.0]])
    spans = ([0.08, 0.0, 0.04], [0.12, 0.04, 0.08])  # any order: min start, max end
    assert assembler.add_features(first, [0, 0, 0], [0, 0, 0], *spans) == []
    second = np.array([[5.0, 5.0], [7.0, 1.0]])
    finished = assembler.add_features(second, [0, 1], [1, 0], [2.0, 0.0], [2.5, 1.0])
    assert [f.relative_path for f in finished] == ["v0.mp4", "v1.mp4"]
    arrays = finished[0].arrays
    np.testing.assert_allclose(arrays["features"], [[2.0, 1.0], [5.0, 5.0]])
    assert arrays["features"].dtype == np.float32
    np.testing.assert_allclose(arrays["timestamps"], [[0.0, 0.12], [2.0, 2.5]])
    assert arrays["timestamps"].dtype == np.float64
    assert arrays["fps"].dtype == np.float64 and arrays["fps"].shape == ()
    assert assembler.num_pending == 0


def test_a_failed_video_is_dropped_and_its_later_samples_ignored():
    assembler = ClipFeatureAssembler()
    assembler.add_video(info(0, [2]))
    assembler.add_features(np.ones((1, 2)), [0], [0], [0.0], [0.1])
    assembler.drop_video(0)
    assert assembler.add_features(np.ones((1, 2)), [0], [0], [0.1], [0.2]) == []
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
