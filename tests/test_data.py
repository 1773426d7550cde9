from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DECODER_RESULTS, EXACT, decoder_available
from torchvision.transforms import InterpolationMode

from vfe.assembly import ClipFeatureAssembler
from vfe.backbones.base import InputSpec
from vfe.clip_grid import uniform_indices
from vfe.dataset import VideoClipDataset, _BatchBuilder
from vfe.errors import VfeError
from vfe.paths import find_videos, output_path_for
from vfe.work_plan import WorkItem

IMAGE_SPEC = InputSpec(None, 16, 16, InterpolationMode.BICUBIC, True, (0.5,) * 3, (0.5,) * 3, 32)
VIDEO_SPEC = InputSpec(8, 20, 16, InterpolationMode.BILINEAR, False, (0.5,) * 3, (0.5,) * 3, 2)


def test_batch_builder_cuts_exact_batches_and_keeps_order():
    builder = _BatchBuilder(batch_size=4)
    builder.add_video({"index": 0})
    builder.add_samples(torch.arange(3).view(3, 1), 0, [0, 0, 1])
    builder.add_end({"index": 0})
    builder.add_samples(torch.arange(3, 9).view(6, 1), 1, [2] * 6)
    builder.add_failure({"index": 7})
    first = builder.pop()
    assert first["pixels"].flatten().tolist() == [0, 1, 2, 3]
    assert first["video_index"] == [0, 0, 0, 1] and first["clip_index"] == [0, 0, 1, 2]
    assert first["videos"] == [{"index": 0}] and first["ends"] == [{"index": 0}]
    assert first["failures"] == [{"index": 7}]
    second = builder.pop()
    assert second["pixels"].flatten().tolist() == [4, 5, 6, 7]
    assert second["videos"] == second["ends"] == second["failures"] == []
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


def _all_batches(dataset):
    return list(iter(dataset))


def samples_by_clip(batches: list[dict], video_index: int) -> dict[int, list[torch.Tensor]]:
    """clip index -> the samples of that clip, in order, for one video."""
    clips: dict[int, list[torch.Tensor]] = {}
    for batch in batches:
        pairs = zip(batch["video_index"], batch["clip_index"], strict=True)
        for row, (video, clip) in enumerate(pairs):
            if video == video_index:
                clips.setdefault(clip, []).append(batch["pixels"][row])
    return clips


def ends_by_path(batches: list[dict], videos) -> dict[str, dict]:
    return {videos[e["index"]].relative_path: e for b in batches for e in b["ends"]}


def assembled(batches: list[dict]) -> dict[int, dict[str, np.ndarray]]:
    """video index -> the arrays the writer would save (features: each sample's clip index)."""
    assembler, finished = ClipFeatureAssembler(), []
    for batch in batches:
        for info in batch["videos"]:
            assembler.add_video(info)
        clip_index = np.asarray(batch["clip_index"], dtype=np.int64)
        features = clip_index[:, None].astype(np.float32)
        finished += assembler.add_features(
            features, np.asarray(batch["video_index"], dtype=np.int64), clip_index
        )
        for end in batch["ends"]:
            finished += assembler.add_end(end)
    assert assembler.num_pending == 0
    return {video.info["index"]: video.arrays for video in finished}


def test_image_spec_yields_every_frame_of_every_clip(video_dir: Path):
    videos = find_videos(video_dir)
    batches = _all_batches(VideoClipDataset(videos, IMAGE_SPEC, 2.0, batch_size=32))
    assert sum(len(b["pixels"]) for b in batches) == 85 + 25
    assert all(b["pixels"].shape[1:] == (3, 16, 16) for b in batches if len(b["pixels"]))
    assert all(b["pixels"].dtype == torch.uint8 for b in batches)
    assert all(len(b["pixels"]) <= 32 for b in batches)
    clips = samples_by_clip(batches, 0)
    assert {clip: len(samples) for clip, samples in clips.items()} == {0: 50, 1: 35}
    ends = ends_by_path(batches, videos)
    assert ends["moving.mp4"]["num_samples"] == 85 and ends["moving.mp4"]["num_frames"] == 85
    assert ends["moving.mp4"]["last"]["num_clips"] == 2
    assert ends["nested/short.mp4"]["last"]["num_clips"] == 1
    arrays = assembled(batches)[0]
    assert arrays["timestamps"].tolist() == [[0.0, 2.0], [2.0, 3.4]]
    assert arrays["fps"] == 25.0


def test_video_spec_yields_one_sample_per_clip(video_dir: Path):
    videos = find_videos(video_dir)
    batches = _all_batches(VideoClipDataset(videos, VIDEO_SPEC, 2.0, batch_size=2))
    pixels = torch.cat([b["pixels"] for b in batches])
    assert pixels.shape == (3, 3, 8, 16, 16)  # 2 clips + 1 clip, (C, T, H, W) each
    rows = [(v, c) for b in batches for v, c in zip(b["video_index"], b["clip_index"], strict=True)]
    assert rows == [(0, 0), (0, 1), (1, 0)]
    assert [len(b["pixels"]) for b in batches] == [2, 1]


def raw_pixels(frames, short_side_size, crop_size, interpolation, antialias):
    """Stands in for resizing, so samples are the decoded frames themselves."""
    return frames.permute(0, 3, 1, 2).contiguous()


FRAME_SPEC = InputSpec(None, 1, 1, InterpolationMode.BICUBIC, True, (0.5,) * 3, (0.5,) * 3, 7)
CLIP8_SPEC = InputSpec(8, 1, 1, InterpolationMode.BILINEAR, False, (0.5,) * 3, (0.5,) * 3, 3)


def one_segment_per_clip(num_clips: int) -> list[list[WorkItem]]:
    """The most a video can be split: every clip decoded from its own seek."""
    return [
        [WorkItem(0, clip, clip + 1 if clip + 1 < num_clips else None, num_clips)]
        for clip in range(num_clips)
    ]


@pytest.mark.parametrize(
    ("decoder", "split"), [(d, False) for d in sorted(DECODER_RESULTS)] + [("pyav", True)]
)
@pytest.mark.parametrize("spec", [FRAME_SPEC, CLIP8_SPEC], ids=["every frame", "8 per clip"])
def test_every_frame_fed_to_the_model_is_the_ffmpeg_frame_of_its_clip(
    spec, decoder, split, real_world_videos, references, monkeypatch
):
    """On every awkward file a decoder claims: the samples of clip i are exactly the frames a
    sequential FFmpeg decode presents in [i*L, (i+1)*L) (all, or 8 spread uniformly). Split:
    the same when every (half-second) clip is decoded as a separate segment, from a seek, as
    workers do with segments of a long video."""
    if not decoder_available(decoder):
        pytest.skip(f"{decoder} cannot run here")
    monkeypatch.setattr("vfe.dataset.resize_and_center_crop", raw_pixels)
    clip_len = Fraction(1, 2) if split else Fraction(2)  # split: many seeks per file
    folder = next(iter(real_world_videos.values())).parent
    claimed = [e for e in find_videos(folder) if DECODER_RESULTS[decoder][e.relative_path] == EXACT]
    for entry in claimed:  # one video per dataset: frame sizes differ (rotation)
        reference = references[entry.relative_path]
        expected_clips = reference.clip_frames(clip_len)
        batches = []
        for work in one_segment_per_clip(len(expected_clips)) if split else [None]:
            dataset = VideoClipDataset(
                [entry], spec, float(clip_len), spec.default_batch_size, work and [work], decoder
            )
            batches += _all_batches(dataset)
        assert not [f for b in batches for f in b["failures"]]
        clips = samples_by_clip(batches, 0)
        assert sorted(clips) == list(range(len(expected_clips))), entry.relative_path
        for clip, frame_indices in enumerate(expected_clips):
            if spec.frames_per_clip is None:
                expected = [reference.frames[k] for k in frame_indices]
                got = [sample.permute(1, 2, 0).numpy() for sample in clips[clip]]
            else:
                picks = uniform_indices(len(frame_indices), spec.frames_per_clip)
                expected = [reference.frames[frame_indices[p]] for p in picks]
                (sample,) = clips[clip]
                got = list(sample.permute(1, 2, 3, 0).numpy())  # (C, T, H, W) -> frames
            assert len(got) == len(expected), (entry.relative_path, clip)
            for a, b in zip(got, expected, strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"{entry.relative_path} clip {clip}")
        duration = reference.duration
        windows = [[float(i * clip_len), float(min((i + 1) * clip_len, duration))]
                   for i in range(len(expected_clips))]  # fmt: skip
        arrays = assembled(batches)[0]
        assert arrays["timestamps"].tolist() == windows, entry.relative_path
        assert arrays["fps"] == pytest.approx(float(len(reference.frames) / duration), rel=1e-12)


@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_workers_cover_every_video_once(video_dir: Path, num_workers, monkeypatch):
    videos = find_videos(video_dir)
    seen = []
    for worker in range(num_workers):
        info = type("WorkerInfo", (), {"id": worker, "num_workers": num_workers})
        monkeypatch.setattr("vfe.dataset.get_worker_info", lambda info=info: info)
        dataset = VideoClipDataset(videos, VIDEO_SPEC, 2.0, 2)
        seen += [item.video_index for item in dataset.worker_items()]
    assert sorted(seen) == list(range(len(videos)))


def test_undecodable_file_becomes_a_failure_record(tmp_path: Path, video_dir: Path):
    (tmp_path / "broken.mp4").write_text("not a video")
    (tmp_path / "ok.mp4").write_bytes((video_dir / "nested" / "short.mp4").read_bytes())
    batches = _all_batches(VideoClipDataset(find_videos(tmp_path), IMAGE_SPEC, 2.0, 8))
    failures = [f for b in batches for f in b["failures"]]
    assert [(f["relative_path"], f["stage"]) for f in failures] == [("broken.mp4", "open")]
    assert sum(len(b["pixels"]) for b in batches) == 25
