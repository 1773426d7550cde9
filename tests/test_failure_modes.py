"""Failure modes found on real files: concealed decode errors, truncation under every decoder,
containers whose audio outlasts the video, timestamp gaps and huge clips held in memory, a
cut-off failure record, bugs that must not pass for bad files, and the writer thread."""

import json
import random
import subprocess
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import decoder_available, extract, run_in_process, run_vfe
from torchvision.transforms import InterpolationMode

from vfe.backbones.openai_clip import CLIPBackbone
from vfe.bench.synthetic import write_faststart_video, write_video
from vfe.data import samples as samples_module
from vfe.data.batching import BatchBuilder
from vfe.data.dataset import VideoClipDataset
from vfe.data.input_spec import InputSpec
from vfe.data.paths import find_videos
from vfe.data.work_plan import split_over_workers
from vfe.decoding.pyav import PyAVVideo
from vfe.decoding.video import DecodeError, Timeline, open_video, split_duration_seconds
from vfe.planning.provenance import read_provenance

FRAMES = InputSpec(None, 8, 8, InterpolationMode.BILINEAR, False, (0.5,) * 3, (0.5,) * 3, 8)
STACK4 = InputSpec(4, 8, 8, InterpolationMode.BILINEAR, False, (0.5,) * 3, (0.5,) * 3, 2, True)


def write_bit_flipped_video(path: Path, num_flips: int = 20, seed: int = 0) -> Path:
    """A 6-s H.264 MP4 with `num_flips` single bits flipped inside the slice data of frames in
    its middle half (container, NAL lengths and slice headers intact): FFmpeg decodes every
    frame, concealing the damage, as with bit errors in a stored or transmitted file."""
    source = write_video(path.with_suffix(".clean.mp4"), 150, 25, height=120, width=160, seed=1)
    data = bytearray(source.read_bytes())
    source.unlink()
    atom = data.find(b"mdat")
    position, end = atom + 4, atom - 4 + int.from_bytes(data[atom - 4 : atom], "big")
    slices = []  # (first, last) byte of each large NAL unit's payload, past its first bytes
    while position + 4 <= end:
        size = int.from_bytes(data[position : position + 4], "big")  # MP4's length prefix
        if size > 64:
            slices.append((position + 4 + 16, position + 4 + size - 1))
        position += 4 + size
    middle = slices[len(slices) // 4 : 3 * len(slices) // 4]
    rng = random.Random(seed)
    for _ in range(num_flips):
        first, last = rng.choice(middle)
        data[rng.randrange(first, last)] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return path


def test_concealed_decode_errors_fail_the_video_unless_allowed(
    tiny_clip_file: Path, tmp_path: Path
):
    write_bit_flipped_video(tmp_path / "in" / "flipped.mp4")
    write_video(tmp_path / "in" / "clean.mp4", 30, seed=2)
    # What the FFmpeg command line reports for the same file.
    ffmpeg = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(tmp_path / "in" / "flipped.mp4"), "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    assert ffmpeg.stderr.strip(), "the damage should be visible to the ffmpeg command line"
    args = [
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_dir", "in", "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    strict = run_vfe(*args, "--output_dir", "strict", cwd=tmp_path)
    assert strict.returncode == 1, strict.stderr
    (record,) = [json.loads(line) for line in (tmp_path / "strict" / "failures.jsonl").open()]
    assert record["relative_path"] == "flipped.mp4" and record["stage"] == "decode"
    assert "frame(s) decoded with errors in the data, concealed by the decoder" in record["error"]
    assert "--data.allow_concealed_errors" in record["error"]
    assert sorted(p.name for p in (tmp_path / "strict").glob("*.npz")) == ["clean.npz"]

    kept = run_vfe(
        *args, "--output_dir", "kept", "--data.allow_concealed_errors", "true", cwd=tmp_path
    )
    assert kept.returncode == 0, kept.stderr
    assert "1 video(s) written although the decoder concealed errors" in kept.stderr
    provenance = read_provenance(tmp_path / "kept" / "flipped.npz")
    assert provenance["video"]["decode_errors"] > 0
    assert provenance["allow_concealed_errors"] is True
    assert "decode_errors" not in read_provenance(tmp_path / "kept" / "clean.npz")["video"]
    # A later strict run into that folder does not keep the damaged video's features: it
    # decodes it again (and fails it); the clean one is skipped.
    again = run_vfe(*args, "--output_dir", "kept", cwd=tmp_path)
    assert again.returncode == 1 and "written 0, skipped 1, failed 1" in again.stderr, again.stderr


@pytest.mark.parametrize("decoder", ["pyav", "torchcodec", "decord"])
def test_every_decoder_fails_a_truncated_file(decoder, tmp_path: Path):
    """A faststart MP4 (index in front) cut after 50 of its 100 packets still opens; every
    decoder must refuse it rather than give a 50-frame video."""
    if not decoder_available(decoder):
        pytest.skip(f"{decoder} cannot run here")
    source = write_faststart_video(tmp_path / "whole.mp4", 100)
    with av.open(str(source)) as container:
        cut = [p for p in container.demux(video=0) if p.size][50].pos
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(source.read_bytes()[:cut])
    with pytest.raises(DecodeError, match=r"before the 4\.00 s its container declares"):
        list(open_video(truncated, decoder).frames())
    assert len(list(open_video(source, decoder).frames())) == 100


def test_segments_are_cut_by_the_video_stream_not_the_longest_stream(tmp_path: Path):
    """An MKV whose audio runs 200 s and video 40 s declares 200 s; cuts placed by that would
    all fall after the last frame and leave one worker with the whole video."""
    path = tmp_path / "long_audio.mkv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:d=40",
         "-f", "lavfi", "-i", "sine=d=200", "-c:v", "libx264", "-g", "20", "-c:a", "aac",
         str(path)],
        check=True,
    )  # fmt: skip
    with av.open(str(path)) as container:
        assert container.duration / av.time_base == pytest.approx(200, abs=1)
    duration = split_duration_seconds(path, "pyav")
    assert duration == pytest.approx(40, abs=0.2)
    work = split_over_workers([0], [path.stat().st_size], 4, Fraction(2), lambda i: duration, 5)
    segments = [(item.first_clip, item.end_clip) for items in work for item in items]
    assert len(segments) == 4 and segments[-1][0] * 2 < 40  # every worker gets video to decode


def test_program_streams_are_never_split(real_world_videos):
    assert split_duration_seconds(real_world_videos["program_stream.mpg"], "pyav") is None
    assert split_duration_seconds(real_world_videos["broadcast.ts"], "pyav") is not None
    assert not PyAVVideo(real_world_videos["program_stream.mpg"]).seeks_exactly


def test_a_timestamp_gap_goes_out_in_batches_with_the_held_frame_converted_once(
    tmp_path: Path, monkeypatch
):
    """20 minutes without a frame: 600 empty 2-s windows holding one frame. They must leave
    the worker a batch at a time, and that frame must be converted once per batch-sized piece
    (not once per window: 1,200 conversions here before)."""
    durations = [1] * 9 + [12_000] + [1] * 10  # ticks of 1/10 s: a 1,200-s gap
    write_video(tmp_path / "in" / "gap.mp4", 20, fps=10, frame_durations=durations)
    converted, buffered = [], []
    original_to_samples, original_pop = VideoClipDataset.to_samples, BatchBuilder.pop

    def counting_to_samples(self, builder, spec, frames):
        converted.extend(id(frame) for frame in frames)
        return original_to_samples(self, builder, spec, frames)

    def recording_pop(self, final=False):
        buffered.append(max(len(buffer) for buffer in self._buffers.values()))
        return original_pop(self, final)

    monkeypatch.setattr(VideoClipDataset, "to_samples", counting_to_samples)
    monkeypatch.setattr(BatchBuilder, "pop", recording_pop)
    dataset = VideoClipDataset(
        find_videos(tmp_path / "in"), {"frames": FRAMES, "clips": STACK4}, 2.0,
        {"frames": 8, "clips": 8},
    )  # fmt: skip
    batches = list(dataset)
    clips = {name: set() for name in ("frames", "clips")}
    for batch in batches:
        for name, samples in batch["models"].items():
            clips[name].update(samples["clip_index"])
    assert clips["frames"] == clips["clips"] == set(range(601))
    pieces = 600 // 8 + 2
    assert len(converted) <= 2 * (20 + pieces)  # each frame once, the held one once a piece
    assert max(buffered) <= 8 + 8  # a batch and one piece, never the whole gap


def test_held_frames_stay_within_the_memory_bound_and_give_the_same_samples(
    video_dir: Path, monkeypatch
):
    """Past MAX_HELD_DECODED_BYTES a clip's frames are kept at the input size: the samples are
    those of the unbounded path."""

    def samples(bound: int) -> tuple[np.ndarray, int]:
        monkeypatch.setattr(samples_module, "MAX_HELD_DECODED_BYTES", bound)
        held, original_add = [], samples_module.ClipSamples.add

        def recording_add(self, frame, clip_index):
            original_add(self, frame, clip_index)
            held.append(self._held_bytes)

        monkeypatch.setattr(samples_module.ClipSamples, "add", recording_add)
        spec = InputSpec(8, 16, 16, InterpolationMode.BICUBIC, True, (0.5,) * 3, (0.5,) * 3, 1)
        dataset = VideoClipDataset(find_videos(video_dir), {"m": spec}, 2.0, {"m": 1})
        pixels = [b["models"]["m"]["pixels"] for b in dataset if b["models"]]
        return np.concatenate([p.numpy() for p in pixels]), max(held)

    unbounded, _ = samples(1 << 40)
    frame_bytes = 64 * 96 * 3 // 2  # yuv420p 96x64
    bounded, most_held = samples(5 * frame_bytes)
    assert most_held <= 5 * frame_bytes
    np.testing.assert_array_equal(bounded, unbounded)


def test_a_cut_off_failure_record_neither_crashes_runs_nor_info(
    tiny_clip_file: Path, tmp_path: Path
):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.mp4").write_text("not a video")
    write_video(tmp_path / "in" / "ok.mp4", 10)
    output = tmp_path / "out"
    output.mkdir()
    (output / "failures.jsonl").write_text('{"relative_path": "x.mp4", "stage": "de')  # killed
    result = run_vfe(
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_dir", "in", "--output_dir", "out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "bad.mp4" in result.stderr
    lines = (output / "failures.jsonl").read_text().splitlines()
    assert lines[0] == '{"relative_path": "x.mp4", "stage": "de'
    assert json.loads(lines[1])["relative_path"] == "bad.mp4"  # on a line of its own
    info = run_in_process(["info", "out"], tmp_path)
    assert info.returncode == 0, info.stderr
    assert "1 unreadable line(s) in failures.jsonl" in info.stdout
    assert "bad.mp4" in info.stdout


def test_a_bug_in_vfe_stops_the_run_instead_of_failing_every_video(video_dir: Path, monkeypatch):
    def broken_place(self, raw_seconds, raw_duration):
        return 1 / 0

    monkeypatch.setattr(Timeline, "place", broken_place)
    dataset = VideoClipDataset(find_videos(video_dir), {"m": FRAMES}, 2.0, {"m": 8})
    with pytest.raises(ZeroDivisionError):
        list(dataset)


class _FailingCLIP(CLIPBackbone):
    def encode(self, samples):
        raise RuntimeError("injected failure")


def test_the_writer_thread_ends_with_a_failed_run_and_a_second_run_works(
    video_dir: Path, tiny_clip_file: Path, tmp_path: Path
):
    with pytest.raises(RuntimeError, match="injected failure"):
        extract(_FailingCLIP(arch="custom", weights=str(tiny_clip_file)), video_dir, tmp_path / "a")
    assert not [t for t in threading.enumerate() if t.name == "vfe-writer"]
    writer = extract(
        CLIPBackbone(arch="custom", weights=str(tiny_clip_file)), video_dir, tmp_path / "b"
    )
    assert writer.total_failed == 0
    assert len(list((tmp_path / "b").rglob("*.npz"))) == 2
    assert not [t for t in threading.enumerate() if t.name == "vfe-writer"]
