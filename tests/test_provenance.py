"""Provenance in every file, `vfe info`, and reruns that notice changed settings."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_in_process, run_vfe

from vfe.bench.synthetic import write_video
from vfe.data.paths import VideoEntry, video_fingerprint
from vfe.planning.provenance import (
    PROVENANCE_KEY,
    first_difference,
    read_provenance,
    sha256_of_file,
)


@pytest.fixture
def clip_args(video_dir: Path, tiny_clip_file: Path) -> list[str]:
    return [
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_dir", str(video_dir), "--output_dir", "out",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip


def output_of(result) -> str:
    return result.stdout + result.stderr


def test_every_file_records_how_it_was_made(
    clip_args, tiny_clip_file: Path, video_dir: Path, tmp_path: Path
):
    from vfe.planning.provenance import sha256_of_file

    result = run_vfe(*clip_args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = np.load(tmp_path / "out" / "moving.npz")
    assert saved["features"].shape == (2, 32)  # the existing keys are unchanged
    record = read_provenance(tmp_path / "out" / "moving.npz")
    assert record["model"] == "vfe.backbones.openai_clip.CLIPBackbone"
    assert record["arch"] == "custom"
    assert record["options"] == {
        "arch": "custom", "weights": str(tiny_clip_file.resolve()), "frames_per_clip": None
    }  # fmt: skip
    assert record["weights"] == str(tiny_clip_file.resolve())
    assert record["weights_sha256"] == sha256_of_file(tiny_clip_file)
    assert record["preprocessing"] == {
        "frames_per_clip": None, "short_side_size": 32, "crop_size": 32,
        "interpolation": "bicubic", "antialias": True,
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
    }  # fmt: skip
    assert (record["clip_length"], record["grid_version"]) == (2.0, 2)
    assert (record["decoder"], record["precision"]) == ("pyav", "32-true")
    assert (record["clip_stride"], record["tail"]) == (None, "keep")
    assert record["decoder_version"] and record["versions"]["torch"]
    stat = (video_dir / "moving.mp4").stat()
    assert record["video"] == {
        "path": str((video_dir / "moving.mp4").absolute()),
        "size_bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "fingerprint": video_fingerprint(video_dir / "moving.mp4"),
        "decode": "sequential",  # every frame: an image backbone uses them all
    }
    assert json.loads(str(saved[PROVENANCE_KEY]))["feature_dim"] == 32


def test_info_describes_a_file_and_a_folder(clip_args, tmp_path: Path):
    assert run_vfe(*clip_args, cwd=tmp_path).returncode == 0
    (tmp_path / "out" / "failures.jsonl").write_text(
        json.dumps({"relative_path": "gone.mp4", "stage": "open", "error": "E: bad"}) + "\n"
    )
    text = run_in_process(["info", "out/moving.npz"], tmp_path)
    assert text.returncode == 0, text.stderr
    assert "2 clips, features [2, 32] float32" in text.stdout and "weights_sha256:" in text.stdout
    folder = run_in_process(["info", "out", "--json"], tmp_path)
    report = json.loads(folder.stdout)
    assert report["files"] == 2
    assert report["feature_shapes"] == {"[2, 32]": 1, "[1, 32]": 1}
    assert report["settings"]["clip_length"] == [{"value": 2.0, "files": 2}]
    assert report["settings"]["preprocessing"][0]["value"]["crop_size"] == 32  # an object
    assert [r["relative_path"] for r in report["failed_videos"]] == ["gone.mp4"]
    plain = run_in_process(["info", "out"], tmp_path)
    assert "2 feature files" in plain.stdout and "gone.mp4: open: E: bad" in plain.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--clip_len", "0.5"], "clip_length: 2.0 (file) -> 0.5 (now)"),
        (["--trainer.precision", "bf16-mixed"], "precision: '32-true' (file)"),
        (["--data.decoder", "decord"], "decoder: 'pyav' (file) -> 'decord' (now)"),
        (["--output_dtype", "float16"], "output_dtype: 'float32' (file) -> 'float16' (now)"),
    ],
)
def test_rerun_with_other_settings_stops_before_extracting(
    change, message, clip_args, tmp_path: Path
):
    assert run_vfe(*clip_args, cwd=tmp_path).returncode == 0
    before = (tmp_path / "out" / "moving.npz").stat().st_mtime_ns
    rerun = run_vfe(*clip_args, *change, cwd=tmp_path)
    assert rerun.returncode == 2
    lines = [line for line in rerun.stderr.splitlines() if line.startswith("vfe: error:")]
    assert len(lines) == 1 and message in lines[0] and "--overwrite" in lines[0], rerun.stderr
    assert "Traceback" not in rerun.stderr
    assert (tmp_path / "out" / "moving.npz").stat().st_mtime_ns == before
    redo = run_vfe(*clip_args, *change, "--overwrite", cwd=tmp_path)
    assert redo.returncode == 0 and "written 2, skipped 0" in output_of(redo), redo.stderr


def test_rerun_with_other_weights_stops(clip_args, tiny_clip_file: Path, tmp_path: Path):
    import torch

    assert run_vfe(*clip_args, cwd=tmp_path).returncode == 0
    other = tmp_path / "other.pt"
    state = torch.load(tiny_clip_file)
    state["visual.proj"] = state["visual.proj"] + 1
    torch.save(state, other)
    args = [str(other) if a == str(tiny_clip_file) else a for a in clip_args]
    rerun = run_vfe(*args, cwd=tmp_path)
    assert rerun.returncode == 2 and "weights_sha256" in rerun.stderr


def test_touched_or_copied_videos_are_recognised_by_their_bytes(
    clip_args, video_dir: Path, tmp_path: Path
):
    inputs, copy = tmp_path / "in", tmp_path / "copy"
    shutil.copytree(video_dir, inputs)
    args = [str(inputs) if a == str(video_dir) else a for a in clip_args]
    assert run_vfe(*args, cwd=tmp_path).returncode == 0
    os.utime(inputs / "moving.mp4", ns=(1, 1))  # touched: same bytes, another time
    touched = run_vfe(*args, cwd=tmp_path)
    assert touched.returncode == 0 and "written 0, skipped 2" in output_of(touched)
    shutil.copytree(inputs, copy, copy_function=shutil.copy)  # copied: new times everywhere
    copied_args = [str(copy) if a == str(inputs) else a for a in args]
    copied = run_vfe(*copied_args, cwd=tmp_path)
    assert copied.returncode == 0 and "written 0, skipped 2" in output_of(copied), copied.stderr


def test_changed_video_stops_the_rerun_and_overwrite_changed_redoes_only_it(
    clip_args, video_dir: Path, tmp_path: Path
):
    inputs = tmp_path / "in"
    shutil.copytree(video_dir, inputs)
    args = [str(inputs) if a == str(video_dir) else a for a in clip_args]
    assert run_vfe(*args, cwd=tmp_path).returncode == 0
    kept = (tmp_path / "out" / "nested" / "short.npz").stat().st_mtime_ns
    video = inputs / "moving.mp4"
    original = video.read_bytes()
    edited = bytearray(original)
    edited[len(edited) // 2] ^= 0xFF  # same size, other bytes
    video.write_bytes(bytes(edited))
    same_size = run_vfe(*args, cwd=tmp_path)
    assert same_size.returncode == 2, same_size.stderr
    assert "the video's bytes changed since (same size" in same_size.stderr
    assert "--overwrite changed" in same_size.stderr and "Traceback" not in same_size.stderr
    write_video(video, num_frames=60, seed=9)  # replaced by another video
    replaced = run_vfe(*args, cwd=tmp_path)
    assert replaced.returncode == 2 and "the video changed since (size" in replaced.stderr
    redo = run_vfe(*args, "--overwrite", "changed", cwd=tmp_path)
    assert redo.returncode == 0 and "written 1, skipped 1" in output_of(redo), redo.stderr
    assert (tmp_path / "out" / "nested" / "short.npz").stat().st_mtime_ns == kept
    assert np.load(tmp_path / "out" / "moving.npz")["features"].shape == (2, 32)  # 60 frames


def test_files_from_an_earlier_vfe_need_overwrite(clip_args, video_dir: Path, tmp_path: Path):
    assert run_vfe(*clip_args, cwd=tmp_path).returncode == 0
    old = tmp_path / "out" / "moving.npz"  # as an earlier vfe wrote it
    arrays = {k: v for k, v in np.load(old).items() if k != PROVENANCE_KEY}
    np.savez(old, **arrays)
    legacy = run_vfe(*clip_args, cwd=tmp_path)
    assert legacy.returncode == 2 and "records no settings" in legacy.stderr


def test_files_made_before_stride_tail_and_convert_on_were_recorded_count_as_the_defaults():
    video = VideoEntry(Path("/v.mp4"), "v.mp4", 10, 5)
    older = {"model": "m", "clip_length": 2.0, "video": {"size_bytes": 10, "mtime_ns": 5}}
    wanted = {
        "model": "m", "clip_length": 2.0, "clip_stride": None, "tail": "keep",
        "convert_on": "workers",
    }  # fmt: skip
    assert first_difference(older, wanted, video) is None
    rounded = first_difference(older, {**wanted, "tail": "round"}, video)
    assert rounded == "tail: 'keep' (file) -> 'round' (now)"
    assert first_difference(older, {**wanted, "clip_stride": 1.0}, video).startswith("clip_stride")
    on_model = first_difference(older, {**wanted, "convert_on": "model"}, video)
    assert on_model == "convert_on: 'workers' (file) -> 'model' (now)"
    # a nested setting: only the keys that differ
    spec = {"frames_per_clip": 8, "crop_size": 224, "mean": [0.5]}
    older = {**older, "preprocessing": spec}
    changed = {**wanted, "preprocessing": {**spec, "frames_per_clip": 4}}
    assert first_difference(older, changed, video) == (
        "preprocessing.frames_per_clip: 8 (file) -> 4 (now)"
    )


def test_a_files_sha256_is_remembered_while_its_size_and_time_stay(tmp_path: Path, monkeypatch):
    """Weights are hashed once, not at every run's start; an edited file is hashed again."""
    import hashlib

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"first")
    first = sha256_of_file(weights)
    assert first == hashlib.sha256(b"first").hexdigest()
    times = weights.stat()
    weights.write_bytes(b"other")  # same size; its time put back: taken as the same file
    os.utime(weights, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert sha256_of_file(weights) == first
    os.utime(weights, ns=(times.st_atime_ns, times.st_mtime_ns + 1_000_000))
    assert sha256_of_file(weights) == hashlib.sha256(b"other").hexdigest()
    assert len(list((tmp_path / "cache" / "vfe" / "sha256").iterdir())) == 2
