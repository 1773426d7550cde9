"""Sparse decoding (`vfe.decoding.sparse`): only the frames a run uses, and those they are
decoded from; every chosen frame (time and pixels) equals the sequential FFmpeg decode's."""

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import ReferenceDecode, reference_decode
from test_data import (
    CLIP8_SPEC,
    FRAME3_SPEC,
    _all_batches,
    assembled,
    dataset_for,
    one_segment_per_clip,
    raw_pixels,
    samples_by_clip,
)
from test_grid_options import MIDDLE_SPEC, middle_frames

from vfe.data.clip_grid import uniform_indices
from vfe.data.paths import VideoEntry, find_videos
from vfe.decoding import sparse
from vfe.decoding.pyav import PyAVVideo

# The corpus files decoded sparsely; the others are decoded sequentially from the outset.
SEQUENTIAL_FILES = {
    "xvid_bframes.avi": "container avi",  # packed B-frames: decode-order timestamps
    "program_stream.mpg": "container mpeg",  # timestamps half a frame off after a seek
}


@pytest.fixture(scope="module")
def open_gop_videos(tmp_path_factory: pytest.TempPathFactory, real_world_videos) -> list[Path]:
    """Open GOPs: leading pictures after each keyframe reference the group before."""
    folder = tmp_path_factory.mktemp("open_gop")
    source = ["-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25", "-t", "3"]
    x265 = "log-level=error:keyint=25:min-keyint=25:open-gop=1:bframes=4"
    made = {
        "hevc_open_gop.mp4": ["-c:v", "libx265", "-x265-params", x265],
        "h264_open_gop.ts": ["-c:v", "libx264", "-g", "12", "-bf", "3", "-x264-params",
                             "open-gop=1", "-f", "mpegts"],
    }  # fmt: skip
    for name, options in made.items():
        command = ["ffmpeg", "-loglevel", "error", "-y", *source, *options, "-pix_fmt", "yuv420p"]
        subprocess.run([*command, str(folder / name)], check=True)
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def corpus(real_world_videos, open_gop_videos) -> list[tuple[VideoEntry, ReferenceDecode]]:
    """The real-world corpus and the open-GOP files, each with its reference decode."""
    folder = next(iter(real_world_videos.values())).parent
    entries = find_videos(folder) + find_videos(open_gop_videos[0].parent)
    return [(entry, reference_decode(entry.path)) for entry in entries]


def _expected_picks(reference: ReferenceDecode, clip_len: Fraction) -> dict[str, list[list[int]]]:
    clips = reference.clip_frames(clip_len)
    three = [[frames[p] for p in uniform_indices(len(frames), 3)] for frames in clips]
    return {"m": [[k] for k in middle_frames(reference, clip_len, clip_len)], "three": three}


@pytest.mark.parametrize("clip_len", [Fraction(1, 25), Fraction(2)], ids=["0.04s", "2s"])
def test_sparse_picks_equal_the_sequential_decode_on_the_real_world_corpus(
    clip_len, corpus, monkeypatch
):
    """Each clip's middle frame and its 3 spread frames (two backbones on one decode) are the
    reference decode's frames, on every corpus file and two open-GOP files; the files the
    checked lists leave out are decoded sequentially, and each end record says which."""
    monkeypatch.setattr("vfe.data.dataset.resize_and_center_crop", raw_pixels)
    for entry, reference in corpus:
        dataset = dataset_for([entry], MIDDLE_SPEC, float(clip_len), sparse_decode=True)
        dataset.specs["three"], dataset.batch_sizes["three"] = FRAME3_SPEC, 4
        batches = _all_batches(dataset)
        assert not [f for b in batches for f in b["failures"]], entry.relative_path
        (end,) = [end for batch in batches for end in batch["ends"]]
        mode = "sequential" if entry.relative_path in SEQUENTIAL_FILES else "sparse"
        assert end.decode == mode, entry.relative_path
        for name, expected in _expected_picks(reference, clip_len).items():
            of_name = [  # samples_by_clip reads backbone "m"
                {**batch, "models": {"m": batch["models"][name]} if name in batch["models"] else {}}
                for batch in batches
            ]
            clips = samples_by_clip(of_name, 0)
            assert sorted(clips) == list(range(len(expected))), (entry.relative_path, name)
            for clip, frames in enumerate(expected):
                got = [sample.permute(1, 2, 0).numpy() for sample in clips[clip]]
                for image, k in zip(got, frames, strict=True):
                    message = f"{entry.relative_path} {name} clip {clip}"
                    np.testing.assert_array_equal(image, reference.frames[k], err_msg=message)
        duration = reference.duration
        windows = [[float(i * clip_len), float(min((i + 1) * clip_len, duration))]
                   for i in range(len(reference.clip_frames(clip_len)))]  # fmt: skip
        assert assembled(batches)[0]["timestamps"].tolist() == windows, entry.relative_path


def test_sparse_segments_and_stacked_clips_equal_the_reference(corpus, monkeypatch):
    """Every half-second clip decoded as its own segment (as workers do with a long video),
    8 stacked frames per clip: the frames are the reference's."""
    monkeypatch.setattr("vfe.data.dataset.resize_and_center_crop", raw_pixels)
    clip_len = Fraction(1, 2)
    for entry, reference in corpus:
        expected = reference.clip_frames(clip_len)
        works = one_segment_per_clip(len(expected))
        if entry.relative_path in SEQUENTIAL_FILES:
            works = [None]
        batches = []
        for work in works:
            options = {"work": work and [work], "sparse_decode": True}
            batches += _all_batches(dataset_for([entry], CLIP8_SPEC, float(clip_len), **options))
        clips = samples_by_clip(batches, 0)
        for clip, frames in enumerate(expected):
            (sample,) = clips[clip]
            picks = [frames[p] for p in uniform_indices(len(frames), 8)]
            got = list(sample.permute(1, 2, 3, 0).numpy())
            for image, k in zip(got, picks, strict=True):
                np.testing.assert_array_equal(image, reference.frames[k], err_msg=str(clip))


def _middles(path: Path, clip_len: Fraction, **options) -> tuple[list, PyAVVideo]:
    """Each clip's middle frame as `(time, rgb)`, asked for when the next clip starts."""
    video = PyAVVideo(path, **options)
    picks, pick, clip, previous = [], None, None, None
    for frame in video.frames():
        index = frame.time_seconds // clip_len
        if index != clip:
            if pick is not None:
                picks.append((pick.time_seconds, pick.rgb()))
            clip, pick = index, previous
        if pick is None or frame.time_seconds < (index + Fraction(1, 2)) * clip_len:
            pick = frame
        previous = frame
    picks.append((pick.time_seconds, pick.rgb()))
    return picks, video


def _equal(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x[0] == y[0] and np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )


def test_a_pick_the_decoder_does_not_give_as_expected_switches_to_a_sequential_decode(
    real_world_videos, monkeypatch
):
    """Decoding started where it cannot be (a frame that is not a keyframe, as a wrong seek
    would): the pick comes out missing or damaged, which is detected; the video goes on
    sequentially, with the same frames, and says so."""
    path = real_world_videos["ntsc_29.97.mp4"]  # keyframes every 12 frames, B-frames
    reference, _ = _middles(path, Fraction(1))
    right, video = _middles(path, Fraction(1), sparse=True)
    assert video.decode_mode == "sparse" and _equal(right, reference)
    assert video._sparse_pictures.decoded_frames < 60  # of 90 frames

    def wrong_start(index: sparse.PacketIndex, position: int) -> int:
        return position  # the pick's own packet, not its group's keyframe

    monkeypatch.setattr(sparse.PacketIndex, "group_start", wrong_start)
    picks, video = _middles(path, Fraction(1), sparse=True)
    assert video.decode_mode == "sequential"
    assert _equal(picks, reference)


def test_files_whose_times_packets_cannot_give_are_decoded_sequentially(real_world_videos):
    for name, reason in SEQUENTIAL_FILES.items():
        with av.open(str(real_world_videos[name])) as container:
            assert sparse.why_not_sparse(container, container.streams.video[0]) == reason
    path = real_world_videos["broadcast.ts"]
    picks, video = _middles(path, Fraction(1, 2), sparse=True)
    assert video.decode_mode == "sparse"
    assert _equal(picks, _middles(path, Fraction(1, 2))[0])


def test_the_extraction_records_how_each_video_was_decoded(tmp_path, tiny_clip_file, corpus):
    """Through `vfe.extract`: CLIP's middle frames decoded sparsely give the features of a
    sequential run (--data.sparse_decode false), and each file's provenance says how."""
    import json

    from conftest import extract

    from vfe.backbones.openai_clip import CLIPBackbone

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("ntsc_29.97.mp4", "xvid_bframes.avi"):
        entry = next(entry for entry, _ in corpus if entry.relative_path == name)
        (folder / name).symlink_to(entry.path)
    runs = {}
    for sparse_decode in (True, False):
        model = CLIPBackbone(arch="custom", weights=str(tiny_clip_file), frames_per_clip="middle")
        out = tmp_path / str(sparse_decode)
        extract(model, folder, out, clip_len=0.5, sparse_decode=sparse_decode)
        runs[sparse_decode] = {}
        for name in ("ntsc_29.97", "xvid_bframes"):
            with np.load(out / f"{name}.npz") as saved:
                decode = json.loads(str(saved["provenance"]))["video"]["decode"]
                runs[sparse_decode][name] = (saved["features"], decode)
    assert runs[True]["ntsc_29.97"][1] == "sparse"
    assert runs[True]["xvid_bframes"][1] == "sequential"
    assert {decode for _, decode in runs[False].values()} == {"sequential"}
    for name, (features, _) in runs[True].items():
        np.testing.assert_array_equal(features, runs[False][name][0])
        assert len(features) > 1 and not np.allclose(features[0], features[1])


def test_a_sparse_video_is_freed_without_the_cyclic_collector(real_world_videos):
    """No reference cycle keeps a video's decoded frames: collected only by the cyclic
    collector, frames a parent process kept until it forked a DataLoader worker were freed in
    the worker, which waited forever there on FFmpeg threads only the parent had."""
    import gc
    import weakref

    gc.disable()
    try:
        video = PyAVVideo(real_world_videos["ntsc_29.97.mp4"], sparse=True)
        frames = list(video.frames())
        assert frames[10].rgb().shape[-1] == 3
        pictures, opened = weakref.ref(video._sparse_pictures), weakref.ref(video)
        del video, frames
        assert pictures() is None and opened() is None
    finally:
        gc.enable()
