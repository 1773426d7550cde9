"""`--model.recipe hero` gives HERO_Video_Feature_Extractor's rows and features.

The reference here is HERO's pipeline written again from the facts of its code (not from
vfe's): frames from the `ffmpeg` command with HERO's filter chain, its padding by repeating the
last frame to whole seconds and whole clips, `ceil(duration / clip_len)` clips from ffprobe's
stream duration, its frame indices from the source's floored rate, `/255` and
`(x - mean) / (std + 1e-8)`; then the same weights (PySlowFast's Caffe2 layout for SlowFast).
"""

import json
import math
import subprocess
from fractions import Fraction
from pathlib import Path

import clip
import numpy as np
import pytest
import torch
from conftest import cosine, run_vfe
from pyslowfast_files import caffe2_blobs, python2_pickle, random_slowfast_state
from torchvision.transforms import InterpolationMode

from vfe.backbones.slowfast import load_slowfast

# (name, frame rate, seconds): non-whole lengths; Matroska has no stream duration (every clip
# HERO's padding makes is kept)
VIDEOS = [
    ("thirty.mp4", "30", 2.3),
    ("twentyfive.mp4", "25", 3.7),
    ("ntsc.mp4", "30000/1001", 3.9),
    ("film.mkv", "24", 2.5),
    ("short.mp4", "25", 1.5),  # under clip_len + 0.1 s: HERO's CLIP takes fps=2/max(int(d), 1)
    ("rotated.mp4", "25", 2.1),  # a 90-degree display matrix: autorotated, scaled as coded
]


def probe(path: Path) -> dict:
    """HERO's `_get_video_info`: ffprobe's first video stream; duration -1 without both the
    stream's duration and frame count."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", str(path)],
        capture_output=True,
        check=True,
    ).stdout
    stream = next(s for s in json.loads(out)["streams"] if s["codec_type"] == "video")
    numerator, denominator = stream["avg_frame_rate"].split("/")
    try:
        int(stream["nb_frames"])
        duration = float(stream["duration"])
    except KeyError:
        duration = -1
    return {
        "width": int(stream["width"]),
        "height": int(stream["height"]),
        "fps": math.floor(float(numerator) / float(denominator)),
        "duration": duration,
    }


def ffmpeg_frames(path: Path, fps: str, size: int) -> np.ndarray:
    """`ffmpeg -vf fps,scale,crop -pix_fmt rgb24` as HERO's VideoLoader runs it -> (N, S, S, 3)."""
    info = probe(path)
    h, w = info["height"], info["width"]
    height, width = (int(h * size / w), size) if h >= w else (size, int(w * size / h))
    x, y = int((width - size) / 2.0), int((height - size) / 2.0)
    chain = f"fps=fps={fps},scale={width}:{height},crop={size}:{size}:{x}:{y}"
    out = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(path),
            "-vf",
            chain,
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "pipe:",
        ],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, size, size, 3)


def check_rows(features: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Each video's rows as HERO's; cosine >= 0.999 per row after removing the mean row over
    every video (post-ReLU features of random weights share a large positive mean that makes
    any two rows alike), and neighbouring rows that differ, so the check can fail."""
    mean = np.concatenate(list(expected.values())).mean(0)
    for name, rows in expected.items():
        assert features[name].shape == rows.shape, name
        centred = rows - mean
        if len(centred) > 1:
            assert cosine(centred[:-1], centred[1:]).max() < 0.99, name
        similarity = cosine(features[name] - mean, centred)
        print(f"{name}: rows {len(rows)}, cosine per row {np.round(similarity, 6).tolist()}")
        assert similarity.min() >= 0.999, (name, similarity)


def hero_slowfast_inputs(path: Path, clip_len: str = "2") -> torch.Tensor:
    """HERO's SlowFast clips `(n, 3, 32, 224, 224)`, normalised (`clip_len` as HERO takes it:
    "2", "3/2")."""
    info = probe(path)
    numerator, _, denominator = clip_len.partition("/")
    seconds_multiple, length = int(numerator), int(numerator) / int(denominator or 1)
    video = torch.from_numpy(ffmpeg_frames(path, "30", 224).copy())
    video = torch.cat([video, video[-1:].repeat(-len(video) % 30, 1, 1, 1)])  # whole seconds
    seconds = video.view(-1, 30, 224, 224, 3)
    pad = -len(seconds) % seconds_multiple  # _pad_clips: the last second, tiled
    seconds = torch.cat([seconds, seconds[-1:].repeat(pad, 1, 1, 1, 1)])
    clips = seconds.reshape(-1, int(30 * length), 224, 224, 3)
    if info["duration"] > 0:
        clips = clips[: math.ceil(info["duration"] / length)]
    span = 32 * 2 * info["fps"] / 30
    index = torch.linspace(0, span - 1, 32).clamp(0, clips.shape[1] - 1).long()
    clips = clips[:, index].float().permute(0, 4, 1, 2, 3) / 255
    return (clips - 0.45) / (0.225 + 1e-8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """testsrc2 (motion in every frame) at 320x240, H.264 in the two containers."""
    folder = tmp_path_factory.mktemp("hero_videos")
    for name, rate, seconds in VIDEOS:
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-f",
                "lavfi",
                "-i",
                f"testsrc2=size=320x240:rate={rate}:duration={seconds}",
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                str(folder / name),
            ],
            check=True,
        )
    upright = folder / "upright.mp4"
    (folder / "rotated.mp4").rename(upright)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(upright), "-c", "copy"]  # noqa: RUF005
        + ["-metadata:s:v:0", "rotate=90", str(folder / "rotated.mp4")],
        check=True,
    )
    upright.unlink()
    return folder


@pytest.fixture(scope="module")
def caffe2_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "SLOWFAST_8x8_R50.pkl"
    path.write_bytes(python2_pickle(caffe2_blobs(random_slowfast_state())))
    return path


def slowfast_against_hero(
    videos: Path, names: list[str], clip_len: str, caffe2_file: Path, tmp_path: Path
) -> dict[str, int]:
    """vfe's `--model.recipe hero` SlowFast rows of `names` against HERO's pipeline on the same
    weights (`check_rows`); each video's row count."""
    out = tmp_path / "features"
    listing = tmp_path / "videos.txt"
    listing.write_text("".join(f"{videos / name}\n" for name in names))
    length = str(float(Fraction(clip_len)))
    result = run_vfe(
        "--model", "slowfast", "--model.recipe", "hero", "--model.weights", str(caffe2_file),
        "--input_list", str(listing), "--output_dir", str(out), "--clip_len", length,
        "--data.num_workers", "0", "--device", "cpu",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model = load_slowfast(str(caffe2_file))
    slow_index = torch.linspace(0, 31, 8).long()
    features, expected = {}, {}
    for name in names:
        fast = hero_slowfast_inputs(videos / name, clip_len)
        with torch.no_grad():
            expected[name] = model([fast.index_select(2, slow_index), fast]).numpy()
        with np.load((out / name).with_suffix(".npz")) as npz:
            features[name] = npz["features"]
    check_rows(features, expected)
    return {name: len(rows) for name, rows in expected.items()}


@pytest.mark.slow
def test_slowfast_hero_gives_heros_rows_and_features(
    videos: Path, caffe2_file: Path, tmp_path: Path
):
    # The four rates and both containers (HERO's index math reads the source's rate; its rows,
    # the stream's duration); the short and rotated files only change frames: CLIP's test.
    names = [name for name, _, _ in VIDEOS[:4]]
    rows = slowfast_against_hero(videos, names, "2", caffe2_file, tmp_path)
    for name, _, seconds in VIDEOS[:4]:
        if not name.endswith(".mkv"):  # no stream duration: HERO's padded clips, all kept
            assert rows[name] == math.ceil(seconds / 2), name


@pytest.mark.slow
def test_slowfast_hero_at_heros_default_clip_length(videos: Path, caffe2_file: Path, tmp_path):
    """HERO's own default, 1.5-s clips: 45 frames, the padding to a multiple of 3 seconds."""
    names = ["twentyfive.mp4", "film.mkv"]  # 3.7 s: 3 rows; 2.5 s padded to 3 s: 2 rows
    rows = slowfast_against_hero(videos, names, "3/2", caffe2_file, tmp_path)
    assert rows == {"twentyfive.mp4": 3, "film.mkv": 2}


@pytest.mark.slow
def test_clip_hero_gives_heros_rows_and_features(
    videos: Path, tiny_clip_file: Path, tmp_path: Path
):
    out = tmp_path / "features"
    result = run_vfe(
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--model.recipe", "hero", "--input_dir", str(videos), "--output_dir", str(out),
        "--data.num_workers", "0", "--device", "cpu",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model, _ = clip.load(str(tiny_clip_file), device="cpu", jit=False)
    size = model.visual.input_resolution
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    features, expected = {}, {}
    for name, _, _ in VIDEOS:
        duration, fps = probe(videos / name)["duration"], "0.5"  # fps=1/clip_len
        if 0 < duration < 2 + 0.1:
            fps = str(2 / max(int(duration), 1))
        frames = torch.from_numpy(ffmpeg_frames(videos / name, fps, size).copy())
        pixels = (frames.float().permute(0, 3, 1, 2) / 255 - mean) / (std + 1e-8)
        with torch.no_grad():
            expected[name] = model.visual(pixels).numpy()
        with np.load((out / name).with_suffix(".npz")) as npz:
            features[name] = npz["features"]
    check_rows(features, expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.recipe", "heros"], "--model.recipe"),
        (["--model.recipe", "hero", "--clip_len", "0.35"], "is 10.5 frames"),
        (["--model.recipe", "hero", "--clip_stride", "1"], "cuts its own rows; drop --clip_stride"),
    ],
)
def test_settings_the_recipe_cannot_run_with_are_one_line_errors(
    args: list[str], message: str, video_dir: Path, tmp_path: Path
):
    result = run_vfe(
        "--model", "slowfast", "--model.weights", "random", *args, "--input_dir", str(video_dir),
        "--output_dir", str(tmp_path / "out"), "--data.num_workers", "0", "--device", "cpu",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("vfe: error:")]
    assert len(error) == 1 and message in error[0], result.stderr
    assert not list((tmp_path / "out").rglob("*.npz"))


def test_clip_frames_per_clip_and_a_recipe_are_refused(
    tiny_clip_file: Path, video_dir: Path, tmp_path: Path
):
    result = run_vfe(
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--model.recipe", "hero", "--model.frames_per_clip", "middle",
        "--input_dir", str(video_dir), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--model.recipe hero picks its own frames; drop --model.frames_per_clip" in (
        result.stderr
    )


def recipe_frames(path: Path, rate: str, size: int) -> np.ndarray:
    """`(N, size, size, 3)`: the frames HERO's filter chain gives through vfe's data path
    (`FilteredSamples`), one row per frame, in row order."""
    from test_data import _all_batches, dataset_for

    from vfe.data.input_spec import FfmpegRecipe, InputSpec, RecipeRows
    from vfe.data.paths import find_videos

    recipe = FfmpegRecipe("hero", size, size, RecipeRows.FRAMES, frame_rate_hz=Fraction(rate))
    spec = InputSpec(
        frames_per_clip=1, resize_size=size, crop_size=size,
        interpolation=InterpolationMode.BICUBIC, antialias=False, mean=(0.5,) * 3,
        std=(0.5,) * 3, default_batch_size=16, ffmpeg_recipe=recipe,
    )  # fmt: skip
    (entry,) = [e for e in find_videos(path.parent) if e.path == path]
    batches = _all_batches(dataset_for([entry], spec))
    assert not [f for b in batches for f in b["failures"]], path
    samples = [b["models"]["m"] for b in batches if "m" in b["models"]]
    rows = sorted(
        (clip, pixels)
        for sample in samples
        for clip, pixels in zip(sample["clip_index"], sample["pixels"], strict=True)
    )
    assert [clip for clip, _ in rows] == list(range(len(rows)))
    return np.stack([pixels.permute(1, 2, 0).numpy() for _, pixels in rows])


@pytest.mark.parametrize("rate", ["30", "1/2"], ids=["fps=30", "fps=1/2"])
def test_recipe_frames_are_the_ffmpeg_commands_on_the_real_world_corpus(real_world_videos, rate):
    """Through the data path, every frame HERO's filter chain gives equals the `ffmpeg`
    command's, byte for byte, on every awkward file (edit list, MPEG-TS, x265, AV1, VFR with a
    gap, 29.97 fps, rotated, MPEG-PS). The Xvid AVI with B-frames is the known exception: the
    command delays its first frame by the reorder depth (tests/test_grid_options)."""
    from test_grid_options import CLI_SHIFTS_TIMES

    for relative, path in real_world_videos.items():
        ours = recipe_frames(path, rate, 64)
        if relative in CLI_SHIFTS_TIMES:
            continue
        expected = ffmpeg_frames(path, rate, 64)
        assert ours.shape == expected.shape, relative
        assert np.array_equal(ours, expected), relative


def test_recipe_frames_of_every_rotation_are_the_ffmpeg_commands(videos: Path, tmp_path: Path):
    """The command's autorotation (transpose or flips, then HERO's scale from the coded size)
    for each display matrix: 90, 180 and 270 degrees."""
    for degrees in (90, 180, 270):
        rotated = tmp_path / f"rotated_{degrees}.mp4"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(videos / "ntsc.mp4"), "-c", "copy"]  # noqa: RUF005
            + ["-metadata:s:v:0", f"rotate={degrees}", str(rotated)],
            check=True,
        )
        expected = ffmpeg_frames(rotated, "30", 64)
        assert np.array_equal(recipe_frames(rotated, "30", 64), expected), degrees


@pytest.mark.parametrize(
    ("num_frames", "multiple", "padded", "sources"),
    [
        # 100 frames, 1.5-s clips (multiple of 3 s): 4 s, then 6 s; seconds 4 and 5 repeat second 3
        (100, 3, 180, {99: 99, 100: 99, 119: 99, 120: 90, 129: 99, 130: 99, 150: 90, 179: 99}),
        (129, 2, 180, {128: 128, 129: 128, 149: 128, 150: 120, 158: 128, 159: 128}),  # 2-s clips
        (60, 2, 60, {59: 59}),  # whole clips: no padding
        (1, 2, 60, {0: 0, 29: 0, 30: 0, 59: 0}),
    ],
)
def test_heros_padding_table(num_frames, multiple, padded, sources):
    from vfe.data.recipe_samples import hero_padded_length, hero_padding_source

    assert hero_padded_length(num_frames, 30, multiple) == padded
    for position, source in sources.items():
        assert hero_padding_source(position, num_frames, 30) == source, position
