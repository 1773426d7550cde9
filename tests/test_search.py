"""`vfe search` ranks as a brute-force cosine over the folder does, reuses its index, and its
report shows the frame on screen at each hit's middle; `vfe pack` / `unpack` round-trip."""

import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import clip
import numpy as np
import pytest
import torch
from conftest import extract, reference_decode, run_in_process
from PIL import Image

from vfe.backbones.openai_clip import CLIPBackbone
from vfe.output.pack import pack, unpack
from vfe.search.index import INDEX_DIR_NAME
from vfe.search.report import THUMBNAIL_HEIGHT

QUERY = "a bright square moving"


def vfe_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`vfe ARGS` as a user runs it, in this process (`conftest.run_in_process`)."""
    return run_in_process(list(args), cwd)


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory, video_dir: Path, text_clip_file: Path) -> Path:
    """Half-second clips of the two test videos (7 + 2 clips) with the tiny random CLIP."""
    out = tmp_path_factory.mktemp("search") / "clip"
    extract(CLIPBackbone(arch="custom", weights=str(text_clip_file)), video_dir, out, clip_len=0.5)
    return out


def brute_force(features_dir: Path, text_clip_file: Path) -> list[tuple[str, float, float]]:
    """(video, start, score) of every clip, best first: CLIP's own text encoder and the files."""
    model, _ = clip.load(str(text_clip_file), device="cpu", jit=False)
    with torch.no_grad():
        text = model.encode_text(clip.tokenize([QUERY])).float().numpy()[0]
    text /= np.linalg.norm(text)
    rows = []
    for path in sorted(features_dir.rglob("*.npz")):
        with np.load(path) as saved:
            source = json.loads(str(saved["provenance"]))["video"]["path"]
            for window, feature in zip(saved["timestamps"], saved["features"], strict=True):
                score = float(feature @ text / np.linalg.norm(feature))
                rows.append((source, float(window[0]), score))
    return sorted(rows, key=lambda row: -row[2])


def test_search_equals_brute_force_and_reuses_its_index(features_dir, text_clip_file, tmp_path):
    result = vfe_command("search", QUERY, str(features_dir), "--top_k", "9", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    expected = brute_force(features_dir, text_clip_file)
    assert len(hits) == len(expected) == 9
    for hit, (source, start, score) in zip(hits, expected, strict=True):
        assert (hit["path"], hit["start_seconds"]) == (source, start)
        assert hit["score"] == pytest.approx(score, abs=1e-5)
    index_file = features_dir / INDEX_DIR_NAME / "index.json"
    built = index_file.stat().st_mtime_ns
    again = vfe_command("search", QUERY, str(features_dir), "--top_k", "3", cwd=tmp_path)
    assert again.returncode == 0 and len(again.stdout.splitlines()) == 3
    assert index_file.stat().st_mtime_ns == built  # reused, not rebuilt
    copy = tmp_path / "copy"
    shutil.copytree(features_dir, copy)
    (copy / "nested" / "short.npz").unlink()  # the index notices a removed file
    fewer = vfe_command("search", QUERY, str(copy), "--top_k", "100", "--json", cwd=tmp_path)
    assert len(json.loads(fewer.stdout)) == 7


def test_report_shows_the_frame_at_each_hits_middle(features_dir, video_dir, tmp_path):
    page = tmp_path / "report.html"
    args = ("search", QUERY, str(features_dir), "--top_k", "9", "--report", str(page))
    result = vfe_command(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"vfe search: report written to {page}" in result.stderr
    text = page.read_text()
    figures = re.findall(
        r'<figure class="hit" data-rank="(\d+)" data-time="([\d.]+)" data-start="([\d.]+)" '
        r'data-end="([\d.]+)" data-source="([^"]+)"><a href="([^"]+)"[^>]*>'
        r'<img src="data:image/jpeg;base64,([^"]+)"',
        text,
    )
    assert len(figures) == 9  # every clip of both videos
    assert "http" not in text and "<script" not in text  # self-contained
    # the header: what was searched, with what
    for fact in (
        QUERY,
        str(features_dir.resolve()),
        "CLIP custom",
        "9 best clips, in 2 of 2 videos",
    ):
        assert html.escape(fact) in text, fact
    # hits grouped by video, each group with its chart (labelled axes, the hits numbered)
    sections = re.findall(r'<section class="video"><h2 title="([^"]+)">(.*?)</section>', text, re.S)
    assert sorted(Path(title).name for title, _ in sections) == ["moving.mp4", "short.mp4"]
    for title, body in sections:
        assert body.count('<svg class="timeline"') == 1
        assert "time in the video (s)" in body and "cosine to the query" in body
        ranks = re.findall(r'<figure class="hit" data-rank="(\d+)"', body)
        assert sorted(re.findall(r'class="hitlabel"[^>]*>#(\d+)<', body)) == sorted(ranks)
        assert set(re.findall(r'data-source="([^"]+)"', body)) == {title}  # its own hits
    assert {Path(source).name for *_, source, _, _ in figures} == {"moving.mp4", "short.mp4"}
    for _, time_text, start, end, source, link, data in figures:
        assert link == f"{Path(source).resolve().as_uri()}#t={float(start):g},{float(end):g}"
        reference = reference_decode(Path(source))
        thumbnail = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
        assert thumbnail.shape[0] == THUMBNAIL_HEIGHT
        time = float(time_text)
        on_screen = max(k for k, t in enumerate(reference.times) if t <= time)
        errors = []
        for frame in reference.frames:
            small = Image.fromarray(frame).resize(thumbnail.shape[1::-1], Image.BICUBIC)
            errors.append(np.abs(np.asarray(small).astype(int) - thumbnail).mean())
        assert int(np.argmin(errors)) == on_screen, time


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.mark.skipif(
    not any(shutil.which(name) for name in BROWSERS), reason="no headless browser installed"
)
def test_report_renders_in_a_headless_browser_on_a_wide_screen_and_a_phone(features_dir, tmp_path):
    page = tmp_path / "report.html"
    args = ("search", QUERY, str(features_dir), "--top_k", "3", "--report", str(page))
    assert vfe_command(*args, cwd=tmp_path).returncode == 0
    browser = next(shutil.which(name) for name in BROWSERS if shutil.which(name))
    for width in (1280, 390):
        shot = tmp_path / f"report-{width}.png"
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--screenshot={shot}", f"--window-size={width},1400", page.as_uri()],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip
        pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
        assert pixels.shape[1] == width
        colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 60  # thumbnails; text is grey
        assert colourful.mean() > 0.02, width
        # the chart's line (#1f6feb) is drawn
        blue = (abs(pixels - np.array([0x1F, 0x6F, 0xEB])).sum(axis=2) < 60).sum()
        assert blue > 50, width


def test_pack_and_unpack_round_trip(features_dir, tmp_path):
    packed = tmp_path / "vid_clip.hdf5"
    assert pack(features_dir, packed) == 2
    import h5py

    with h5py.File(packed, "r") as file:  # UniVTG's cache: f[str(vid)][:] is the features
        with np.load(features_dir / "moving.npz") as saved:
            np.testing.assert_array_equal(file["moving"][:], saved["features"])
        assert file["nested/short"][:].shape[1] == 32
    back = tmp_path / "back"
    assert unpack(packed, back) == 2
    for relative in ("moving.npz", "nested/short.npz"):
        with np.load(features_dir / relative) as original, np.load(back / relative) as restored:
            assert sorted(original.files) == sorted(restored.files)
            for key in original.files:
                np.testing.assert_array_equal(original[key], restored[key])
                assert original[key].dtype == restored[key].dtype, key


def test_pack_keeps_long_attributes(tmp_path):
    """A 10-hour video's timestamps (36,000 x 2 float64, 576 KB) as an attribute."""
    folder = tmp_path / "f"
    folder.mkdir()
    rows = 18_000
    np.savez(
        folder / "long.npz",
        features=np.ones((rows, 4), np.float32),
        timestamps=np.arange(rows * 2, dtype=np.float64).reshape(rows, 2),
    )
    pack(folder, tmp_path / "p.h5")
    unpack(tmp_path / "p.h5", tmp_path / "u")
    with np.load(tmp_path / "u" / "long.npz") as restored:
        assert restored["timestamps"].shape == (rows, 2)


def test_pack_cli_errors(tmp_path):
    result = vfe_command("pack", str(tmp_path / "none"), str(tmp_path / "x.h5"), cwd=tmp_path)
    assert result.returncode == 2 and "is not a folder" in result.stderr


def test_moved_videos_are_found_under_input_dir(features_dir, video_dir, tmp_path):
    from vfe.search.command import source_of

    moved = tmp_path / "moved"
    shutil.copytree(video_dir, moved)
    video = {"features_file": "nested/short.npz", "source": str(tmp_path / "gone" / "short.mp4")}
    assert source_of(video, moved) == str(moved / "nested" / "short.mp4")
    assert source_of(video, None) == video["source"]  # reported as not found by the page
    recorded = {"features_file": "moving.npz", "source": str(video_dir / "moving.mp4")}
    assert source_of(recorded, moved) == recorded["source"]


def test_unpack_never_replaces_files_and_names_bad_input(features_dir, tmp_path):
    packed = tmp_path / "p.h5"
    pack(features_dir, packed)
    back = tmp_path / "back"
    (back / "nested").mkdir(parents=True)
    (back / "nested" / "short.npz").write_bytes(b"mine")
    result = vfe_command("unpack", str(packed), str(back), cwd=tmp_path)
    assert result.returncode == 2 and "nested/short.npz" in result.stderr
    assert (back / "nested" / "short.npz").read_bytes() == b"mine"
    assert not (back / "moving.npz").exists()  # nothing written
    (tmp_path / "not.h5").write_text("text")
    bad = vfe_command("unpack", str(tmp_path / "not.h5"), str(tmp_path / "x"), cwd=tmp_path)
    assert bad.returncode == 2 and "cannot be read as HDF5" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_searching_random_weight_features_says_so_in_search_s_words(tmp_path: Path):
    """Was: `--like: ...`, an option of `vfe text`, not of search."""
    folder = tmp_path / "random"
    folder.mkdir()
    provenance = {
        "model": "vfe.backbones.openai_clip.CLIPBackbone",
        "arch": "ViT-B/32",
        "weights_sha256": "random",
        "options": {"arch": "ViT-B/32", "weights": "random"},
    }
    np.savez(
        folder / "a.npz",
        features=np.ones((2, 4), np.float32),
        timestamps=np.array([[0.0, 2.0], [2.0, 3.0]]),
        provenance=np.array(json.dumps(provenance)),
    )
    result = vfe_command("search", "a dog", str(folder), cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"vfe search: error: features folder {str(folder)!r}: those features")
    assert "made with random weights" in line and "--like" not in line
