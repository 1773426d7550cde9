"""Every decoder against what a sequential FFmpeg decode presents, on files made the way real
datasets are made. The table below is docs/output.md's "Which files are exact", pinned both ways."""

import itertools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import (
    DECODER_RESULTS,
    EXACT,
    ReferenceDecode,
    decoder_available,
    reference_decode,
)

from vfe.bench.synthetic import write_faststart_video, write_video
from vfe.decoding.video import DecodeError, Timeline, check_decoder, open_video
from vfe.errors import VfeError

# Times from libraries that report float seconds are exact to the microsecond only.
TIME_TOLERANCE = {
    "pyav": Fraction(0),
    "torchcodec": Fraction(1, 10**6),
    "decord": Fraction(1, 10**6),
}
CASES = [(decoder, name) for decoder, files in DECODER_RESULTS.items() for name in files]


def decode_all(path: Path, decoder: str) -> tuple[list[np.ndarray], list[Fraction], Fraction]:
    frames = list(open_video(path, decoder).frames())
    images = [frame.rgb().cpu().numpy() for frame in frames]
    return images, [f.time_seconds for f in frames], frames[-1].duration_seconds


def differences(decoder: str, path: Path, reference: ReferenceDecode) -> list[str]:
    """What differs from the reference: empty when the decoder is exact on this file."""
    images, times, _ = decode_all(path, decoder)
    if len(images) != len(reference.frames):
        return ["wrong frame count"]
    found = []
    if any(not np.array_equal(a, b) for a, b in zip(images, reference.frames, strict=True)):
        found.append("wrong frames")
    tolerance = TIME_TOLERANCE[decoder]
    if any(abs(a - b) > tolerance for a, b in zip(times, reference.times, strict=True)):
        found.append("wrong times")
    return found


@pytest.mark.parametrize(("decoder", "name"), CASES)
def test_decoder_against_sequential_ffmpeg(decoder, name, real_world_videos, references):
    if not decoder_available(decoder):
        pytest.skip(f"{decoder} cannot run here")
    if name not in real_world_videos:
        pytest.skip(f"this ffmpeg cannot write {name}")
    expected = DECODER_RESULTS[decoder][name]
    if expected == "cannot open":
        with pytest.raises(Exception):  # noqa: B017 - whatever the library raises
            open_video(real_world_videos[name], decoder)
        return
    found = differences(decoder, real_world_videos[name], references[name])
    assert found == ([] if expected == EXACT else [expected])


def test_rotation_matches_the_ffmpeg_command_line(real_world_videos):
    import subprocess

    path = real_world_videos["rotated_90.mp4"]
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "3", "-f", "rawvideo",
         "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    images, _, _ = decode_all(path, "pyav")
    assert images[0].shape == (96, 64, 3)  # stored 96x64, displayed upright
    expected = np.frombuffer(raw, np.uint8).reshape(3, 96, 64, 3)
    np.testing.assert_array_equal(np.stack(images[:3]), expected)


def test_times_and_durations_of_awkward_files(real_world_videos):
    expectations = {  # name: (frames, last time, last duration)
        "edit_list_cut.mp4": (52, Fraction(53, 25), Fraction(1, 25)),
        "broadcast.ts": (75, Fraction(74, 25), Fraction(1, 25)),  # its first pts is 1.48 s
        "xvid_bframes.avi": (73, Fraction(72, 25), Fraction(1, 25)),
        "ntsc_29.97.mp4": (90, 89 * Fraction(1001, 30000), Fraction(1001, 30000)),
        "vfr_gap.mkv": (60, Fraction(5800, 1000), Fraction(33, 1000)),
    }
    for name, (count, last, duration) in expectations.items():
        _, times, last_duration = decode_all(real_world_videos[name], "pyav")
        assert (len(times), times[-1], last_duration) == (count, last, duration), name
        assert times[0] == 0 and all(b > a for a, b in itertools.pairwise(times))


def test_truncated_file_is_an_error_not_a_shorter_video(tmp_path: Path):
    source = write_faststart_video(tmp_path / "whole.mp4", 100)
    with av.open(str(source)) as container:  # cut exactly between two packets
        packets = [p for p in container.demux(video=0) if p.size]
        cut = packets[50].pos
    data = source.read_bytes()
    (tmp_path / "cut_between_packets.mp4").write_bytes(data[:cut])
    (tmp_path / "cut_inside_a_packet.mp4").write_bytes(data[: cut + 40])
    for name, message in [
        ("cut_between_packets.mp4", "before the 4.00 s its container declares"),
        ("cut_inside_a_packet.mp4", "corrupt packet"),
    ]:
        with pytest.raises(DecodeError, match=message):
            list(open_video(tmp_path / name, "pyav").frames())
    assert len(list(open_video(source, "pyav").frames())) == 100


def test_a_file_without_video_is_an_error(tmp_path: Path):
    from vfe.bench.synthetic import write_audio_only

    with pytest.raises(DecodeError, match="no video stream"):
        open_video(write_audio_only(tmp_path / "audio.mp4"), "pyav")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # (raw start, raw duration) per frame -> (time from first frame, duration)
        ([(1.5, 0.5), (2.0, 0.5)], [(0, 0.5), (0.5, 0.5)]),  # a file that starts at 1.5 s
        ([(0, 0.25), (None, 0.25), (0.5, 0.25)], [(0, 0.25), (0.25, 0.25), (0.5, 0.25)]),
        ([(0, 0.25), (0.25, 0.25), (0.25, 0.25)], [(0, 0.25), (0.25, 0.25), (0.5, 0.25)]),
        ([(0, None), (0.1, None)], [(0, 0.04), (0.1, 0.04)]),  # nominal duration fills in
    ],
)
def test_timeline_repairs_missing_and_repeated_times(raw, expected):
    timeline = Timeline(Fraction(1, 25))
    to_fraction = lambda x: None if x is None else Fraction(str(x))  # noqa: E731
    placed = [timeline.place(to_fraction(t), to_fraction(d)) for t, d in raw]
    assert placed == [(to_fraction(t), to_fraction(d)) for t, d in expected]


def test_timeline_without_any_duration_cannot_place_a_frame():
    timeline = Timeline(Fraction(0))
    timeline.place(Fraction(0), None)
    with pytest.raises(DecodeError, match="no usable timestamp"):
        timeline.place(None, None)


def test_frames_are_converted_only_when_asked(tmp_path: Path, monkeypatch):
    from vfe.decoding import pyav

    converted = []
    original = pyav._rgb_of
    monkeypatch.setattr(pyav, "_rgb_of", lambda frame: converted.append(1) or original(frame))
    frames = list(open_video(write_video(tmp_path / "v.mp4", 20), "pyav").frames())
    assert len(frames) == 20 and not converted
    assert frames[7].rgb().shape == (64, 96, 3) and len(converted) == 1


@pytest.mark.parametrize(
    ("decoder", "device", "message"),
    [
        ("ffmpeg-cli", "cpu", "--data.decoder 'ffmpeg-cli' is unknown"),
        ("decord", "cuda", "needs --data.decoder pyav .with --data.convert_on model."),
        ("pyav", "tpu", "--data.decode_device 'tpu' is unknown"),
    ],
)
def test_bad_decoder_choices_are_clear_errors(decoder, device, message):
    with pytest.raises(VfeError, match=message):
        check_decoder(decoder, device)


def test_torchcodec_without_ffmpeg_libraries_fails_at_start(monkeypatch):
    pytest.importorskip("torchcodec")
    import torchcodec._internally_replaced_utils as loading

    def no_ffmpeg():
        raise RuntimeError("Could not load libtorchcodec. Likely causes:\n  1. FFmpeg ...")

    monkeypatch.setattr(loading, "load_core_libraries", no_ffmpeg)
    with pytest.raises(VfeError, match=r"apt-get install ffmpeg.*Could not load libtorchcodec"):
        check_decoder("torchcodec")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nvdec_streaming_matches_cpu_decoding(real_world_videos, references):
    if not decoder_available("torchcodec"):
        pytest.skip("torchcodec cannot run here")
    for name, path in real_world_videos.items():
        frames = list(open_video(path, "torchcodec", device="cuda").frames())
        reference = reference_decode(path)
        assert len(frames) == len(reference.frames), name
        for frame, expected in zip(frames, reference.frames, strict=True):
            difference = np.abs(frame.rgb().cpu().numpy().astype(int) - expected).mean()
            assert difference < 3, name  # NVDEC's colour conversion differs slightly
