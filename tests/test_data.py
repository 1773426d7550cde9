from pathlib import Path

import pytest
import torch
from torchvision.transforms import InterpolationMode

from vfe.backbones.base import InputSpec
from vfe.data import VideoClipDataset, _BatchBuilder, assign_shards
from vfe.errors import VfeError
from vfe.paths import find_videos, output_path_for

IMAGE_SPEC = InputSpec(None, 16, 16, InterpolationMode.BICUBIC, True, (0.5,) * 3, (0.5,) * 3, 32)
VIDEO_SPEC = InputSpec(8, 20, 16, InterpolationMode.BILINEAR, False, (0.5,) * 3, (0.5,) * 3, 2)


@pytest.mark.parametrize(
    ("sizes", "num_shards"),
    [([5, 1, 1, 1, 1, 1], 2), ([3] * 7, 3), ([1, 2], 5), ([], 3), ([10, 9, 8, 1], 1)],
)
def test_shards_cover_every_video_exactly_once(sizes, num_shards):
    shards = assign_shards(sizes, num_shards)
    assert len(shards) == num_shards
    assert sorted(i for shard in shards for i in shard) == list(range(len(sizes)))


def test_shards_are_balanced_by_size_largest_first():
    shards = assign_shards([5, 1, 1, 1, 1, 1], 2)
    assert sorted(shards) == [[0], [1, 2, 3, 4, 5]]
    loads = [
        sum([4, 4, 3, 3, 2, 2][i] for i in shard) for shard in assign_shards([4, 4, 3, 3, 2, 2], 2)
    ]
    assert loads == [9, 9]


def test_batch_builder_cuts_exact_batches_and_keeps_order():
    builder = _BatchBuilder(batch_size=4)
    builder.add_samples(torch.arange(3).view(3, 1), 0, 0, [0.0, 0.1, 0.2], [0.1, 0.2, 0.3])
    builder.add_video({"index": 0})
    builder.add_samples(torch.arange(3, 9).view(6, 1), 1, 2, [4.0] * 6, [6.0] * 6)
    builder.add_failure({"index": 7})
    first = builder.pop()
    assert first["pixels"].flatten().tolist() == [0, 1, 2, 3]
    assert first["video_index"] == [0, 0, 0, 1] and first["clip_index"] == [0, 0, 0, 2]
    assert first["start_seconds"] == [0.0, 0.1, 0.2, 4.0]
    assert first["end_seconds"] == [0.1, 0.2, 0.3, 6.0]
    assert first["videos"] == [{"index": 0}] and first["failures"] == [{"index": 7}]
    second = builder.pop()
    assert second["pixels"].flatten().tolist() == [4, 5, 6, 7]
    assert second["videos"] == [] and second["failures"] == []
    assert builder.pop()["pixels"].flatten().tolist() == [8]
    assert not builder.has_anything()


def test_find_videos_is_recursive_sorted_and_ignores_other_files(tmp_path: Path):
    for name in ["b.mp4", "a/c.MKV", "a/d.webm", "notes.txt", "e.mp4.part"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [v.relative_path for v in find_videos(tmp_path)] == ["a/c.MKV", "a/d.webm", "b.mp4"]
    assert output_path_for(Path("out"), "a/c.MKV") == Path("out/a/c.npz")


def test_find_videos_rejects_two_videos_with_one_output(tmp_path: Path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "a.mkv").write_bytes(b"x")
    with pytest.raises(VfeError, match=r"a\.mkv and a\.mp4"):
        find_videos(tmp_path)


def test_find_videos_empty_or_missing_folder(tmp_path: Path):
    with pytest.raises(VfeError, match="holds no videos"):
        find_videos(tmp_path)
    with pytest.raises(VfeError, match="is not a folder"):
        find_videos(tmp_path / "missing")


def sample_rows(batches: list[dict]) -> list[tuple[int, int, float, float]]:
    """(video_index, clip_index, start_seconds, end_seconds) of every sample, in order."""
    keys = ("video_index", "clip_index", "start_seconds", "end_seconds")
    return [row for b in batches for row in zip(*(b[k] for k in keys), strict=True)]


def _all_batches(dataset):
    return list(iter(dataset))


def test_image_spec_yields_every_frame_of_every_clip(video_dir: Path):
    videos = find_videos(video_dir)
    batches = _all_batches(VideoClipDataset(videos, IMAGE_SPEC, 2.0, batch_size=32))
    samples = sum(len(b["pixels"]) for b in batches)
    assert samples == 85 + 25
    assert all(b["pixels"].shape[1:] == (3, 16, 16) for b in batches if len(b["pixels"]))
    assert all(b["pixels"].dtype == torch.uint8 for b in batches)
    assert all(len(b["pixels"]) <= 32 for b in batches)
    infos = {info["relative_path"]: info for b in batches for info in b["videos"]}
    assert infos["moving.mp4"]["samples_per_clip"] == [50, 35]
    moving = [row for row in sample_rows(batches) if row[0] == 0]
    assert [row[2] for row in moving] == pytest.approx([i / 25 for i in range(85)], abs=1e-6)
    assert [row[3] for row in moving] == pytest.approx([(i + 1) / 25 for i in range(85)], abs=1e-6)
    assert infos["nested/short.mp4"]["num_clips"] == 1


def test_video_spec_yields_one_sample_per_clip(video_dir: Path):
    videos = find_videos(video_dir)
    batches = _all_batches(VideoClipDataset(videos, VIDEO_SPEC, 2.0, batch_size=2))
    pixels = torch.cat([b["pixels"] for b in batches])
    assert pixels.shape == (3, 3, 8, 16, 16)  # 2 clips + 1 clip, (C, T, H, W) each
    spans = [(video, start, end) for video, _, start, end in sample_rows(batches)]
    assert spans == [(0, 0.0, 2.0), (0, 2.0, 3.4), (1, 0.0, 1.0)]
    assert [len(b["pixels"]) for b in batches] == [2, 1]


@pytest.mark.parametrize(("world_size", "num_workers"), [(1, 1), (2, 1), (2, 3), (3, 2)])
def test_rank_and_worker_shards_cover_every_video_once(
    video_dir: Path, world_size, num_workers, monkeypatch
):
    videos = find_videos(video_dir)
    seen = []
    for rank in range(world_size):
        for worker in range(num_workers):
            info = type("WorkerInfo", (), {"id": worker, "num_workers": num_workers})
            monkeypatch.setattr("vfe.data.get_worker_info", lambda info=info: info)
            dataset = VideoClipDataset(videos, VIDEO_SPEC, 2.0, 2, rank, world_size)
            seen += dataset.shard_indices()
    assert sorted(seen) == list(range(len(videos)))


def test_undecodable_file_becomes_a_failure_record(tmp_path: Path, video_dir: Path):
    (tmp_path / "broken.mp4").write_text("not a video")
    (tmp_path / "ok.mp4").write_bytes((video_dir / "nested" / "short.mp4").read_bytes())
    batches = _all_batches(VideoClipDataset(find_videos(tmp_path), IMAGE_SPEC, 2.0, 8))
    failures = [f for b in batches for f in b["failures"]]
    assert [(f["relative_path"], f["stage"]) for f in failures] == [("broken.mp4", "open")]
    assert sum(len(b["pixels"]) for b in batches) == 25


def test_repeated_frame_indices_are_decoded_once(video_dir: Path, monkeypatch):
    from vfe.video import DecordVideo

    video = DecordVideo(video_dir / "moving.mp4")
    asked = []
    original = video._reader.get_batch
    monkeypatch.setattr(video._reader, "get_batch", lambda idx: asked.append(idx) or original(idx))
    decoded = video.get_frames([0, 0, 3, 3, 3, 7])
    frames = decoded.frames
    assert asked == [[0, 3, 7]]
    assert frames.shape == (6, 64, 96, 3)
    assert decoded.start_seconds.tolist() == [0.0, 0.0, 0.12, 0.12, 0.12, 0.28]
    assert decoded.end_seconds.tolist() == [0.04, 0.04, 0.16, 0.16, 0.16, 0.32]
    assert torch.equal(frames[0], frames[1]) and torch.equal(frames[2], frames[4])
    assert not torch.equal(frames[0], frames[5])
