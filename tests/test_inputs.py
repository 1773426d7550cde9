"""Inputs and outputs besides a folder tree: a list of videos (with ids), the flat layout, and
the Python API `vfe.extract`, which returns what the CLI writes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_vfe

import vfe
from vfe.data.paths import find_videos, flat_layout, read_video_list
from vfe.errors import VfeError


def test_a_text_list_names_outputs_by_id_or_path(tmp_path: Path, video_dir: Path):
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "sub" / "videos.txt"
    listing.write_text(
        f"# comment\n{video_dir / 'moving.mp4'}\tvid_A-1\n\n"
        f"{video_dir / 'nested' / 'short.mp4'}\n../missing.mp4\tgone\n"
    )
    entries = read_video_list(listing)
    assert [e.relative_path for e in entries] == ["vid_A-1.mp4", "short.mp4", "gone.mp4"]
    assert entries[2].path == (tmp_path / "sub" / ".." / "missing.mp4").absolute()
    assert entries[2].size_bytes == 0  # listed: the run reports it as a failure


def test_a_csv_list_and_relative_paths(tmp_path: Path, video_dir: Path):
    listing = video_dir / "list.csv"
    listing.write_text("path,id,extra\nmoving.mp4,abc,x\nnested/short.mp4,,y\n")
    try:
        entries = read_video_list(listing)
    finally:
        listing.unlink()
    assert [e.relative_path for e in entries] == ["abc.mp4", "nested/short.mp4"]
    assert entries[0].path == (video_dir / "moving.mp4").absolute()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("l.csv", "file,id\na.mp4,1\n", "needs a 'path' column"),
        ("l.txt", "a.mp4\t../up\n", "id '../up' cannot name a file"),
        ("l.txt", "a.mp4\tx\nb.mp4\tx\n", "would write the same .npz"),
        ("l.txt", "# nothing\n", "lists no videos"),
    ],
)
def test_bad_lists_are_refused_with_the_line(tmp_path: Path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(VfeError, match=message):
        read_video_list(tmp_path / name)


def test_flat_layout_names_by_file_name_and_refuses_clashes(tmp_path: Path, video_dir: Path):
    flat = flat_layout(find_videos(video_dir))
    assert [e.relative_path for e in flat] == ["moving.mp4", "short.mp4"]
    for name in ("a/x.mp4", "b/x.mkv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(VfeError, match=r"a/x\.mp4 and \S*b/x\.mkv"):
        flat_layout(find_videos(tmp_path))


def test_cli_list_input_flat_ids_and_failures(tmp_path: Path, video_dir: Path, tiny_clip_file):
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{video_dir / 'moving.mp4'}\tvid1\n{tmp_path / 'missing.mp4'}\tvid2\n")
    out = tmp_path / "out"
    result = run_vfe(
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_list", str(listing), "--output_dir", str(out), "--data.num_workers", "0",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # one video failed
    assert sorted(p.name for p in out.glob("*.npz")) == ["vid1.npz"]
    (failure,) = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failure["path"] == str(tmp_path / "missing.mp4")
    flat = tmp_path / "flat"
    result = run_vfe(
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_dir", str(video_dir), "--layout", "flat", "--output_dir", str(flat),
        "--data.num_workers", "0", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in flat.rglob("*.npz")) == ["moving.npz", "short.npz"]
    assert not (flat / "nested").exists()
    both = run_vfe(
        "--model", "clip", "--input_list", str(listing), "--input_dir", str(video_dir),
        cwd=tmp_path,
    )  # fmt: skip
    assert both.returncode == 2 and "give one of them" in both.stderr


def test_api_returns_what_the_cli_writes(tmp_path: Path, video_dir: Path, tiny_clip_file):
    options = {"clip": {"arch": "custom", "weights": str(tiny_clip_file)}}
    videos = [video_dir / "moving.mp4", str(video_dir / "nested" / "short.mp4")]
    got = vfe.extract(videos, "clip", options, clip_stride=1.0)
    assert list(got) == [str(videos[0]), videos[1]]
    cli = run_vfe(
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_dir", str(video_dir), "--output_dir", str(tmp_path / "cli"),
        "--clip_stride", "1", "--data.num_workers", "0", cwd=tmp_path,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    for key, relative in zip(got, ["moving.npz", "nested/short.npz"], strict=True):
        with np.load(tmp_path / "cli" / relative) as written:
            np.testing.assert_array_equal(got[key]["features"], written["features"])
            np.testing.assert_array_equal(got[key]["timestamps"], written["timestamps"])
            provenance = json.loads(str(written["provenance"]))
        assert got[key]["provenance"]["weights_sha256"] == provenance["weights_sha256"]
        assert got[key]["provenance"]["clip_stride"] == 1.0
    # 3.4 s with 2-s clips every second: clips at 0, 1, 2, 3
    assert got[str(videos[0])]["timestamps"].tolist() == [[0, 2], [1, 3], [2, 3.4], [3, 3.4]]
    with pytest.raises(VfeError, match=r"1 video\(s\) failed: .*missing\.mp4"):
        vfe.extract([tmp_path / "missing.mp4"], "clip", options)
    partial = vfe.extract(
        [tmp_path / "missing.mp4", videos[0]], "clip", options, allow_failures=True
    )
    assert list(partial) == [str(videos[0])]


def test_api_takes_one_models_options_alone_and_stays_quiet_every_call(
    video_dir: Path, tiny_clip_file: Path, capfd
):
    video = video_dir / "moving.mp4"
    options = {"arch": "custom", "weights": str(tiny_clip_file)}  # without the "clip" key
    for call in range(2):  # the second call as quiet as the first
        got = vfe.extract([video], "clip", options, output_dtype="float16")
        assert got[str(video)]["features"].dtype == np.float16
        assert got[str(video)]["provenance"]["output_dtype"] == "float16"
        err = capfd.readouterr().err
        for noise in ("GPU available", "Tip", "vfe-", "Warning", "written"):
            assert noise not in err, (call, err)  # no library lines, no temporary folder
    with pytest.raises(VfeError, match=r"model_options names 'slowfast', which is not among"):
        vfe.extract([video], "clip", {"slowfast": {"weights": "random"}})


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("tpu", "device 'tpu' is not allowed; choose one of auto, cpu, cuda"),
        ("cuda", "device='cuda' was asked for, but PyTorch sees no CUDA GPU here"),
    ],
)
def test_the_api_checks_its_device_before_anything_runs(tmp_path: Path, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(VfeError, match=message):
        vfe.extract(tmp_path, device=device)


@pytest.mark.slow
def test_a_bad_list_stops_every_rank_at_once(tmp_path: Path, video_dir: Path, tiny_clip_file):
    """Rank 0 reads the list; its error reaches the other rank as the same one line."""
    listing = tmp_path / "videos.txt"
    listing.write_text(
        f"{video_dir / 'moving.mp4'}\tsame\n{video_dir / 'nested/short.mp4'}\tsame\n"
    )
    result = run_vfe(
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_list", str(listing), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.strategy", "ddp", "--data.num_workers", "0", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr  # was 134 in ~1 of 3 runs (gloo at exit)
    assert "would write the same .npz" in result.stderr
    assert "Traceback" not in result.stderr  # rank 1 crashed in the broadcast before
    assert "terminate called" not in result.stderr  # rank 1 aborted at exit in ~1 of 8
