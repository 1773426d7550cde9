"""Production-run behaviour: bad input, kill and resume, DDP, mixed precision, memory."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cosine, extract, run_in_process, run_vfe, stop_after_first_file

from vfe.backbones.openai_clip import CLIPBackbone
from vfe.backbones.slowfast import SlowFastBackbone
from vfe.bench.synthetic import (
    write_audio_only,
    write_faststart_video,
    write_video,
)
from vfe.data.datamodule import VideoDataModule


@pytest.fixture(scope="module")
def bad_input_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Broken files of every kind beside good ones with awkward names and lengths."""
    folder = tmp_path_factory.mktemp("bad_input")
    work = tmp_path_factory.mktemp("bad_input_sources")
    front_index = write_faststart_video(work / "front.mp4", 100).read_bytes()
    back_index = write_video(work / "back.mp4", 100).read_bytes()
    damaged = bytearray(front_index)
    damaged[len(damaged) // 2 : len(damaged) // 2 + 2000] = bytes(2000)
    broken = {
        "zero bytes.mp4": b"",
        "text.mkv": b"this is not a video\n",
        "truncated, index at end.mp4": back_index[: len(back_index) // 2],
        "truncated, index in front.mp4": front_index[: len(front_index) // 2],
        "garbage mid-file.mp4": bytes(damaged),
    }
    for name, data in broken.items():
        (folder / name).write_bytes(data)
    write_audio_only(folder / "audio only.mp4")
    write_video(folder / "één frame ü.mp4", num_frames=1)
    write_video(folder / "half second.mp4", num_frames=12, fps=25)
    write_video(folder / "a" / "same.mp4", num_frames=30, seed=1)
    write_video(folder / "b" / "same.mp4", num_frames=30, seed=2)
    (folder / "notes.txt").write_text("not a video extension: ignored")
    return folder


BROKEN = {
    "zero bytes.mp4",
    "text.mkv",
    "truncated, index at end.mp4",
    "truncated, index in front.mp4",
    "garbage mid-file.mp4",
    "audio only.mp4",
}
GOOD = {"één frame ü.npz": 1, "half second.npz": 1, "a/same.npz": 1, "b/same.npz": 1}


def test_bad_input_never_stops_a_run(bad_input_dir: Path, tiny_clip_file: Path, tmp_path: Path):
    result = run_vfe(
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_dir", str(bad_input_dir), "--output_dir", "out", "--data.num_workers", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    output = tmp_path / "out"
    records = [json.loads(line) for line in (output / "failures.jsonl").open(encoding="utf-8")]
    assert {r["relative_path"] for r in records} == BROKEN
    assert all(r["stage"] in {"open", "decode"} and r["error"] for r in records)
    written = {p.relative_to(output).as_posix() for p in output.rglob("*.npz")}
    assert written == set(GOOD)
    for name, num_clips in GOOD.items():
        assert np.load(output / name)["features"].shape == (num_clips, 32)
    same_a, same_b = np.load(output / "a/same.npz"), np.load(output / "b/same.npz")
    assert not np.allclose(same_a["features"], same_b["features"])  # two videos, two outputs
    assert sorted(p.name for p in output.rglob(".*")) == []  # no stray temporary files
    assert "6 video(s) failed" in result.stdout + result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_a_failure(tmp_path: Path, tiny_clip_file: Path):
    inputs = tmp_path / "in"
    write_video(inputs / "locked.mp4", num_frames=10)
    (inputs / "locked.mp4").chmod(0)
    result = run_vfe(
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_dir", "in", "--output_dir", "out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "locked.mp4" in (tmp_path / "out" / "failures.jsonl").read_text()


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_videos(
    slowfast_pyth_file: Path, tmp_path: Path
):
    for index in range(5):
        write_video(tmp_path / "in" / f"v{index}.mp4", num_frames=25, seed=index)
    output = tmp_path / "out"
    args = [
        sys.executable, "-m", "vfe", "predict", "--model", "slowfast",
        "--model.weights", str(slowfast_pyth_file), "--input_dir", "in", "--output_dir", "out",
        "--clip_len", "1", "--data.num_workers", "0", "--batch_size", "1",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    stop_after_first_file(args, tmp_path, output, signal.SIGKILL)
    done_before = {p.name: p.stat().st_mtime_ns for p in output.glob("*.npz")}
    assert 1 <= len(done_before) < 5, "the run should have been killed part-way"

    result = run_in_process(args[3:], tmp_path)  # the same command (a process of its own: above)
    assert result.returncode == 0, result.stderr
    summary = result.stdout + result.stderr
    assert f"written {5 - len(done_before)}, skipped {len(done_before)}, failed 0" in summary
    after = {p.name: p.stat().st_mtime_ns for p in output.glob("*.npz")}
    assert sorted(after) == [f"v{i}.npz" for i in range(5)]
    assert all(after[name] == mtime for name, mtime in done_before.items())  # not redone
    for name in after:
        assert np.load(output / name)["features"].shape == (1, 2304)
    assert not [p for p in output.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("models", "convert_on"),
    [("clip", "workers"), ("clip,pann", "model")],
    ids=["one backbone", "with audio, converted on the model"],
)
def test_ddp_two_processes_equal_one_process(
    models, convert_on, tiny_clip_file: Path, request: pytest.FixtureRequest, tmp_path: Path
):
    """Two DDP ranks write what one process writes (several backbones from one decode over two
    ranks, SlowFast's included, are `test_shared_videos.py`'s; here an audio backbone's)."""
    for index, num_frames in enumerate([85, 30, 60, 12, 1]):
        path = write_video(tmp_path / f"v{index}.mp4", num_frames=num_frames, seed=index)
        (tmp_path / "in").mkdir(exist_ok=True)
        with_audio = ["-f", "lavfi", "-i", f"sine=frequency={300 + 100 * index}:sample_rate=48000",
                      "-shortest", "-c:a", "aac"]  # fmt: skip
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-i", str(path), *with_audio, "-c:v", "copy",
             str(tmp_path / "in" / path.name)],
            check=True,
        )  # fmt: skip
    weights = {"clip": ["--model.arch", "custom", "--model.weights", str(tiny_clip_file)]}
    if models != "clip":
        weights = {
            "clip": ["--model.clip.arch", "custom", "--model.clip.weights", str(tiny_clip_file)],
            "pann": ["--model.pann.weights", str(request.getfixturevalue("pann_file"))],
        }
    common = [
        "--model", models, *(arg for args in weights.values() for arg in args),
        "--input_dir", "in", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar",
        "false", "--data.num_workers", "1", "--data.convert_on", convert_on,
    ]  # fmt: skip
    single = run_vfe(*common, "--output_dir", "one", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    double = run_vfe(
        *common, "--output_dir", "two", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        cwd=tmp_path,
    )  # fmt: skip
    assert double.returncode == 0, double.stderr
    for name in weights:
        label = f"{name}: " if len(weights) > 1 else ""
        assert f"{label}written 5, skipped 0, failed 0, clips 7" in double.stderr
        folder = name if len(weights) > 1 else ""
        for index in range(5):
            one = np.load(tmp_path / "one" / folder / f"v{index}.npz")
            two = np.load(tmp_path / "two" / folder / f"v{index}.npz")
            np.testing.assert_allclose(two["features"], one["features"], rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(two["timestamps"], one["timestamps"])
            assert f'"convert_on": "{convert_on}"' in str(two["provenance"])


NATIVE_BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.parametrize(
    ("backbone", "precision"),
    [
        ("clip", "bf16-mixed"),
        ("clip", "bf16-true"),  # weights in bf16: inputs must be too
        pytest.param(
            "slowfast",
            "bf16-mixed",
            # Emulated bf16 runs SlowFast at minutes per clip; the tiny CLIP covers the path.
            marks=[
                pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16"),
                pytest.mark.slow,
            ],
        ),
    ],
)
def test_bf16_matches_fp32(
    backbone, precision, tiny_clip_file: Path, slowfast_pyth_file: Path, tmp_path: Path
):
    write_video(tmp_path / "in" / "v.mp4", num_frames=25, seed=3)
    features = {}
    for run in ("32-true", precision):
        if backbone == "clip":
            model = CLIPBackbone(arch="custom", weights=str(tiny_clip_file))
        else:
            model = SlowFastBackbone(weights=str(slowfast_pyth_file))
        extract(model, tmp_path / "in", tmp_path / run, precision=run, clip_len=0.5)
        features[run] = np.load(tmp_path / run / "v.npz")["features"]
    assert features[precision].dtype == np.float32
    assert features[precision].shape == features["32-true"].shape
    assert not np.array_equal(features[precision], features["32-true"])  # bf16 did run
    assert cosine(features[precision], features["32-true"]).min() >= 0.99


PEAK_RSS = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_video_length(tiny_clip_file: Path, tmp_path: Path):
    peaks = {}
    for minutes in (1, 10):
        folder = tmp_path / f"in{minutes}"
        write_video(folder / "long.mp4", num_frames=minutes * 60 * 10, fps=10, height=48, width=64)
        command = [
            sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "vfe", "predict",
            "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
            "--input_dir", str(folder), "--output_dir", str(tmp_path / f"out{minutes}"),
            "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        peaks[minutes] = int(result.stdout.split()[-1])  # KiB
        clips = np.load(tmp_path / f"out{minutes}" / "long.npz")["features"].shape[0]
        assert clips == minutes * 30
    assert peaks[10] <= 1.2 * peaks[1], peaks


@pytest.mark.parametrize(
    ("spec_kind", "batch_size"), [("frames", 16), ("clips", 2)], ids=["every frame", "32/clip"]
)
def test_frames_held_do_not_grow_with_video_length(spec_kind, batch_size, tmp_path, monkeypatch):
    """A 6,000-frame video is never held whole: each conversion call gets at most one chunk of
    `batch_size` frames (every-frame backbones) or one clip's frames (clip backbones)."""
    from torchvision.transforms import InterpolationMode

    from vfe.data.dataset import VideoClipDataset
    from vfe.data.input_spec import InputSpec
    from vfe.data.paths import find_videos

    write_video(tmp_path / "in" / "long.mp4", num_frames=6000, fps=25, height=16, width=16)
    frames_per_clip = None if spec_kind == "frames" else 32
    spec = InputSpec(
        frames_per_clip, 8, 8, InterpolationMode.BILINEAR, False, (0.5,) * 3, (0.5,) * 3, 4,
        stack_frames=frames_per_clip is not None,
    )  # fmt: skip
    held, original = [], VideoClipDataset.to_samples
    monkeypatch.setattr(
        VideoClipDataset,
        "to_samples",
        lambda self, builder, spec, frames: (
            held.append(len(frames)) or original(self, builder, spec, frames)
        ),
    )
    videos = find_videos(tmp_path / "in")
    dataset = VideoClipDataset(videos, {"m": spec}, 2.0, {"m": batch_size})
    samples = sum(len(batch["models"]["m"]["pixels"]) for batch in dataset if batch["models"])
    assert samples == (6000 if frames_per_clip is None else 120)
    assert max(held) == (batch_size if frames_per_clip is None else 32)


def test_linked_folders_are_searched_and_broken_links_reported(
    tiny_clip_file: Path, tmp_path: Path
):
    inputs, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    write_video(inputs / "here.mp4", num_frames=10)
    write_video(elsewhere / "linked.mp4", num_frames=10)
    (inputs / "more").symlink_to(elsewhere, target_is_directory=True)
    (inputs / "loop").symlink_to(inputs, target_is_directory=True)  # must not recurse forever
    (inputs / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")
    result = run_vfe(
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_dir", "in", "--output_dir", "out", "--trainer.enable_progress_bar", "false",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in tmp_path.rglob("*.npz"))
    assert written == ["here.npz", "more/linked.npz"]
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").open()]
    assert record["relative_path"] == "gone.mp4" and record["stage"] == "open"


def test_failures_of_other_runs_are_kept(tmp_path: Path, tiny_clip_file: Path):
    """A second run into the same folder (concurrent or later) neither deletes nor reports the
    first run's failure records."""
    write_video(tmp_path / "in" / "ok.mp4", num_frames=10)
    (tmp_path / "in" / "bad.mp4").write_text("not a video")
    output = tmp_path / "out"
    output.mkdir()
    other = {"relative_path": "x.mp4", "stage": "decode", "error": "E", "run": "another-run"}
    (output / "failures.jsonl").write_text(json.dumps(other) + "\n")
    result = run_vfe(
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_dir", "in", "--output_dir", "out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    records = [json.loads(line) for line in (output / "failures.jsonl").open()]
    assert records[0] == other
    assert records[1]["relative_path"] == "bad.mp4" and records[1]["run"] != "another-run"
    assert "bad.mp4" in result.stderr and "x.mp4" not in result.stderr


@pytest.mark.slow
def test_sigterm_stops_after_the_batch_and_the_same_command_resumes(
    tiny_clip_file: Path, tmp_path: Path
):
    for index in range(6):
        write_video(tmp_path / "in" / f"v{index}.mp4", num_frames=250, seed=index)
    output = tmp_path / "out"
    args = [
        sys.executable, "-m", "vfe", "predict", "--model", "clip", "--model.arch", "custom",
        "--model.weights", str(tiny_clip_file), "--input_dir", "in", "--output_dir", "out",
        "--data.num_workers", "1", "--batch_size", "4", "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    returncode, stderr = stop_after_first_file(args, tmp_path, output, signal.SIGTERM)
    assert returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    done = sorted(p.name for p in output.glob("*.npz"))
    assert 1 <= len(done) < 6
    assert not [p for p in output.iterdir() if p.name.startswith(".")]  # no partial file
    rerun = run_in_process(args[3:], tmp_path)  # the same command
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipped {len(done)}" in rerun.stdout + rerun.stderr
    assert len(list(output.glob("*.npz"))) == 6


def test_a_long_video_split_over_workers_gives_the_unsplit_features(
    tiny_clip_file: Path, tmp_path: Path, monkeypatch
):
    write_video(tmp_path / "in" / "long.mp4", num_frames=600, fps=25, height=48, width=64, seed=5)
    plans = []
    original = VideoDataModule.plan_work
    monkeypatch.setattr(
        VideoDataModule,
        "plan_work",
        lambda self, videos, ranks: plans.append(original(self, videos, ranks)[0]) or [plans[-1]],
    )
    for name, workers in (("whole", 0), ("split", 2)):
        model = CLIPBackbone(arch="custom", weights=str(tiny_clip_file))
        extract(model, tmp_path / "in", tmp_path / name, num_workers=workers, min_segment_seconds=4)
    assert [len(items) for items in plans[1]] == [1, 1]  # one segment per worker
    assert plans[1][0][0].num_segments == 2 and plans[1][0][0].end_clip == 6
    whole, split = (np.load(tmp_path / name / "long.npz") for name in ("whole", "split"))
    assert split["features"].shape == (12, 32)
    np.testing.assert_allclose(split["features"], whole["features"], rtol=1e-5, atol=1e-6)
    for key in ("timestamps", "fps", "clip_length"):
        np.testing.assert_array_equal(split[key], whole[key])
