from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DECODER_RESULTS, EXACT, decoder_available
from torchvision.transforms import InterpolationMode

from vfe.data.batching import BatchBuilder
from vfe.data.clip_grid import uniform_indices
from vfe.data.dataset import VideoClipDataset
from vfe.data.input_spec import InputSpec, ResizeMode
from vfe.data.paths import find_videos, output_path_for
from vfe.data.records import Samples
from vfe.data.transforms import resize_and_center_crop
from vfe.data.work_plan import WorkItem
from vfe.decoding.colour import FrameLayout
from vfe.errors import VfeError
from vfe.output.assembly import ClipFeatureAssembler

IMAGE_SPEC = InputSpec(None, 16, 16, InterpolationMode.BICUBIC, True, (0.5,) * 3, (0.5,) * 3, 32)
VIDEO_SPEC = InputSpec(
    8, 20, 16, InterpolationMode.BILINEAR, False, (0.5,) * 3, (0.5,) * 3, 2, True
)


def dataset_for(videos, spec, clip_len=2.0, batch_size=None, **options) -> VideoClipDataset:
    """A one-backbone dataset; its samples are under the name "m"."""
    return VideoClipDataset(
        videos, {"m": spec}, clip_len, {"m": batch_size or spec.default_batch_size}, **options
    )


def pixels_of(batch: dict) -> torch.Tensor:
    return batch["models"]["m"]["pixels"] if "m" in batch["models"] else torch.empty(0)


def test_batch_builder_cuts_exact_batches_per_backbone_and_keeps_order():
    builder = BatchBuilder({"a": 4, "b": 1})
    builder.add_video({"index": 0})
    builder.add_samples("a", Samples(torch.arange(3).view(3, 1), None), 0, [0, 0, 1])
    builder.add_end({"index": 0})
    builder.add_samples("a", Samples(torch.arange(3, 9).view(6, 1), None), 1, [2] * 6)
    builder.add_samples("b", Samples(torch.arange(2).view(2, 1), None), 1, [5, 6])
    builder.add_failure({"index": 7})
    assert builder.full()
    first = builder.pop()
    assert first["models"]["a"]["pixels"].flatten().tolist() == [0, 1, 2, 3]
    assert first["models"]["a"]["video_index"] == [0, 0, 0, 1]
    assert first["models"]["a"]["clip_index"] == [0, 0, 1, 2]
    assert first["models"]["b"]["clip_index"] == [5]  # its own batch size
    assert first["videos"] == [{"index": 0}] and first["ends"] == [{"index": 0}]
    assert first["failures"] == [{"index": 7}]
    second = builder.pop()
    assert second["models"]["a"]["pixels"].flatten().tolist() == [4, 5, 6, 7]
    assert second["models"]["b"]["clip_index"] == [6]
    assert second["videos"] == second["ends"] == second["failures"] == []
    assert not builder.full()
    assert builder.pop()["models"] == {}  # only whole batches until the end
    last = builder.pop(final=True)
    assert last["models"]["a"]["pixels"].flatten().tolist() == [8] and "b" not in last["models"]
    assert not builder.has_anything()


def test_packed_runs_keep_their_order_and_layouts_across_batches():
    """Samples of several layouts (packed pictures of two sizes, and some at the backbone's
    size) come out as runs in the order they were added, split where a batch ends."""
    small = FrameLayout(2, 2, "planar", "bt601", False, 0)
    other, large = small._replace(height=4), None  # None: at the backbone's size
    builder = BatchBuilder({"a": 4})
    builder.add_samples("a", Samples(torch.arange(3).view(3, 1), small), 0, [0, 1, 2])
    builder.add_samples("a", Samples(torch.arange(3, 5).view(2, 1), large), 1, [0, 1])
    builder.add_samples("a", Samples(torch.arange(5, 7).view(2, 1), other), 2, [0, 1])
    builder.add_samples("a", Samples(torch.arange(7, 8).view(1, 1), other), 2, [2])
    first = builder.pop()["models"]["a"]
    assert [run.flatten().tolist() for run in first["pixels"]] == [[0, 1, 2], [3]]
    assert first["layouts"] == [small, None]
    assert first["video_index"] == [0, 0, 0, 1]
    second = builder.pop()["models"]["a"]
    assert [run.flatten().tolist() for run in second["pixels"]] == [[4], [5, 6, 7]]
    assert second["layouts"] == [None, other]
    assert second["clip_index"] == [1, 0, 1, 2]
    assert not builder.has_anything()


def test_decoded_bytes_travel_with_the_last_samples_decoded_before_them():
    """Progress counts a file's bytes when the model has their samples, not when they were
    decoded: a worker runs ahead of the model by whole videos."""
    builder = BatchBuilder({"a": 2, "b": 1})
    builder.add_samples("a", Samples(torch.zeros(1, 1), None), 0, [0])
    builder.add_samples("b", Samples(torch.zeros(1, 1), None), 0, [0])
    builder.add_decoded_bytes(100)  # after a's first sample and b's
    builder.add_samples("a", Samples(torch.zeros(2, 1), None), 0, [0, 1])
    builder.add_decoded_bytes(50)  # the rest of the video: after all three of a's samples
    first = builder.pop()  # a: samples 1-2, b: sample 1
    assert first["decoded_bytes"] == 100
    assert builder.pop(final=True)["decoded_bytes"] == 50
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
        if "m" not in batch["models"]:
            continue
        samples = batch["models"]["m"]
        pairs = zip(samples["video_index"], samples["clip_index"], strict=True)
        for row, (video, clip) in enumerate(pairs):
            if video == video_index:
                clips.setdefault(clip, []).append(pixels_of(batch)[row])
    return clips


def ends_by_path(batches: list[dict], videos) -> dict[str, dict]:
    return {videos[e.index].relative_path: e for b in batches for e in b["ends"]}


def assembled(batches: list[dict]) -> dict[int, dict[str, np.ndarray]]:
    """video index -> the arrays the writer would save (features: each sample's clip index)."""
    assembler, finished = ClipFeatureAssembler("m"), []
    for batch in batches:
        for info in batch["videos"]:
            assembler.add_video(info)
        if "m" in batch["models"]:
            samples = batch["models"]["m"]
            clip_index = np.asarray(samples["clip_index"], dtype=np.int64)
            features = clip_index[:, None].astype(np.float32)
            video_index = np.asarray(samples["video_index"], dtype=np.int64)
            finished += assembler.add_features(features, video_index, clip_index)
        for end in batch["ends"]:
            finished += assembler.add_end(end)
    assert assembler.num_pending == 0
    return {video.info.index: video.arrays for video in finished}


def test_image_spec_yields_every_frame_of_every_clip(video_dir: Path):
    videos = find_videos(video_dir)
    batches = _all_batches(dataset_for(videos, IMAGE_SPEC, batch_size=32))
    assert sum(len(pixels_of(b)) for b in batches) == 85 + 25
    assert all(pixels_of(b).shape[1:] == (3, 16, 16) for b in batches if len(pixels_of(b)))
    assert all(pixels_of(b).dtype == torch.uint8 for b in batches if len(pixels_of(b)))
    assert all(len(pixels_of(b)) <= 32 for b in batches)
    clips = samples_by_clip(batches, 0)
    assert {clip: len(samples) for clip, samples in clips.items()} == {0: 50, 1: 35}
    ends = ends_by_path(batches, videos)
    assert ends["moving.mp4"].num_samples == {"m": 85}
    assert ends["moving.mp4"].num_frames == 85
    assert ends["moving.mp4"].last.num_clips == 2
    assert ends["nested/short.mp4"].last.num_clips == 1
    arrays = assembled(batches)[0]
    assert arrays["timestamps"].tolist() == [[0.0, 2.0], [2.0, 3.4]]
    assert arrays["fps"] == 25.0


def test_video_spec_yields_one_sample_per_clip(video_dir: Path):
    videos = find_videos(video_dir)
    batches = _all_batches(dataset_for(videos, VIDEO_SPEC, batch_size=2))
    pixels = torch.cat([pixels_of(b) for b in batches])
    assert pixels.shape == (3, 3, 8, 16, 16)  # 2 clips + 1 clip, (C, T, H, W) each
    samples = [b["models"]["m"] for b in batches]
    rows = [(v, c) for m in samples for v, c in zip(m["video_index"], m["clip_index"], strict=True)]
    assert rows == [(0, 0), (0, 1), (1, 0)]
    assert [len(pixels_of(b)) for b in batches] == [2, 1]


def raw_pixels(frames, spec):
    """Stands in for resizing, so samples are the decoded frames themselves."""
    return frames.permute(0, 3, 1, 2).contiguous()


FRAME_SPEC = InputSpec(None, 1, 1, InterpolationMode.BICUBIC, True, (0.5,) * 3, (0.5,) * 3, 7)
CLIP8_SPEC = InputSpec(8, 1, 1, InterpolationMode.BILINEAR, False, (0.5,) * 3, (0.5,) * 3, 3, True)
# CLIP with --model.frames_per_clip 3: three frames spread over the clip, each its own sample.
FRAME3_SPEC = InputSpec(3, 1, 1, InterpolationMode.BICUBIC, True, (0.5,) * 3, (0.5,) * 3, 5)


def one_segment_per_clip(num_clips: int) -> list[list[WorkItem]]:
    """The most a video can be split: every clip decoded from its own seek."""
    return [
        [WorkItem(0, clip, clip + 1 if clip + 1 < num_clips else None, num_clips)]
        for clip in range(num_clips)
    ]


@pytest.mark.parametrize(
    ("decoder", "split"), [(d, False) for d in sorted(DECODER_RESULTS)] + [("pyav", True)]
)
@pytest.mark.parametrize(
    "spec", [FRAME_SPEC, CLIP8_SPEC, FRAME3_SPEC], ids=["every frame", "8 per clip", "3 frames"]
)
def test_every_frame_fed_to_the_model_is_the_ffmpeg_frame_of_its_clip(
    spec, decoder, split, real_world_videos, references, monkeypatch
):
    """On every awkward file a decoder claims: the samples of clip i are exactly the frames a
    sequential FFmpeg decode presents in [i*L, (i+1)*L) (all, or 8 spread uniformly). Split:
    the same when every (half-second) clip is decoded as a separate segment, from a seek, as
    workers do with segments of a long video, and feeds a second backbone at the same time."""
    if not decoder_available(decoder):
        pytest.skip(f"{decoder} cannot run here")
    monkeypatch.setattr("vfe.data.dataset.resize_and_center_crop", raw_pixels)
    clip_len = Fraction(1, 2) if split else Fraction(2)  # split: many seeks per file
    folder = next(iter(real_world_videos.values())).parent
    claimed = [e for e in find_videos(folder) if DECODER_RESULTS[decoder][e.relative_path] == EXACT]
    for entry in claimed:  # one video per dataset: frame sizes differ (rotation)
        reference = references[entry.relative_path]
        expected_clips = reference.clip_frames(clip_len)
        batches = []
        for work in one_segment_per_clip(len(expected_clips)) if split else [None]:
            dataset = dataset_for(
                [entry], spec, float(clip_len), work=work and [work], decoder=decoder
            )
            if split:  # and a second backbone fed from the same decode
                dataset.specs["other"] = CLIP8_SPEC
                dataset.batch_sizes["other"] = 2
            batches += _all_batches(dataset)
        assert not [f for b in batches for f in b["failures"]]
        clips = samples_by_clip(batches, 0)
        assert sorted(clips) == list(range(len(expected_clips))), entry.relative_path
        for clip, frame_indices in enumerate(expected_clips):
            picks = range(len(frame_indices))
            if spec.frames_per_clip is not None:
                picks = uniform_indices(len(frame_indices), spec.frames_per_clip)
            expected = [reference.frames[frame_indices[p]] for p in picks]
            if spec.stack_frames:
                (sample,) = clips[clip]
                got = list(sample.permute(1, 2, 3, 0).numpy())  # (C, T, H, W) -> frames
            else:
                got = [sample.permute(1, 2, 0).numpy() for sample in clips[clip]]
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
        monkeypatch.setattr("vfe.data.dataset.get_worker_info", lambda info=info: info)
        dataset = dataset_for(videos, VIDEO_SPEC, batch_size=2)
        seen += [item.video_index for item in dataset.worker_items()]
    assert sorted(seen) == list(range(len(videos)))


def test_undecodable_file_becomes_a_failure_record(tmp_path: Path, video_dir: Path):
    (tmp_path / "broken.mp4").write_text("not a video")
    (tmp_path / "ok.mp4").write_bytes((video_dir / "nested" / "short.mp4").read_bytes())
    batches = _all_batches(dataset_for(find_videos(tmp_path), IMAGE_SPEC, batch_size=8))
    failures = [f for b in batches for f in b["failures"]]
    assert [(f.relative_path, f.stage) for f in failures] == [("broken.mp4", "open")]
    assert sum(len(pixels_of(b)) for b in batches) == 25


def _spec(resize_size, crop_size, mode=ResizeMode.SHORTEST) -> InputSpec:
    return InputSpec(
        None, resize_size, crop_size, InterpolationMode.BICUBIC, True, (0.5,) * 3, (0.5,) * 3, 4,
        resize_mode=mode,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("resize_size", "crop_size", "mode", "frame", "resized", "sample"),
    [
        # torchvision's Resize(224): the long side truncated, landscape and portrait
        (224, 224, ResizeMode.SHORTEST, (720, 1280), (224, 398), (224, 224)),
        (224, 224, ResizeMode.SHORTEST, (1280, 720), (398, 224), (224, 224)),
        ((224, 224), 224, ResizeMode.SHORTEST, (64, 96), (224, 336), (224, 224)),
        # timm's ResizeKeepRatio for a non-square target: the smaller ratio, rounded
        ((98, 140), (98, 140), ResizeMode.SHORTEST, (64, 96), (98, 147), (98, 140)),
        ((98, 140), (98, 140), ResizeMode.SHORTEST, (96, 64), (210, 140), (98, 140)),
        # SigLIP's squash: the whole frame to the target, no crop
        (224, None, ResizeMode.SQUASH, (720, 1280), (224, 224), (224, 224)),
        ((256, 320), (224, 288), ResizeMode.SQUASH, (720, 1280), (256, 320), (224, 288)),
    ],
)
def test_resize_rules(resize_size, crop_size, mode, frame, resized, sample):
    spec = _spec(resize_size, crop_size, mode)
    assert spec.resized_size(*frame) == resized
    assert spec.sample_size == sample
    frames = torch.zeros(2, *frame, 3, dtype=torch.uint8)
    assert resize_and_center_crop(frames, spec).shape == (2, 3, *sample)


def test_a_shortest_side_resize_without_a_crop_is_refused():
    with pytest.raises(ValueError, match="needs a crop_size"):
        _spec(224, None)


def test_the_recipe_keeps_the_keys_earlier_files_carry_and_names_new_modes():
    assert _spec(224, 224).recipe()["short_side_size"] == 224
    assert "resize_mode" not in _spec(224, 224).recipe()
    squash = _spec(224, None, ResizeMode.SQUASH).recipe()
    assert squash["resize_mode"] == "squash" and squash["resize_size"] == [224, 224]
    assert squash["crop_size"] is None and "short_side_size" not in squash
